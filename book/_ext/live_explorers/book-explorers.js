/* The book's explorers on the web page (book/_ext/live_explorers.py puts their states in
   the page; companion/page_explorers.py computes them). No library, no network: each
   explorer is a few native controls (range inputs, radio buttons: keyboard and screen
   readers work as for any form) and an SVG drawn from the shipped arrays. Colours follow
   the theme's light and dark modes through CSS variables (book-explorers.css). */
(() => {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";
  // the book's figures' colours (companion/plot.py PALETTE), so that a caption's "red" is
  // the explorer's red too
  const C = ["#1f5fa8", "#d1495b", "#2e933c", "#edae49", "#6c4f9c"];

  // --- arrays -------------------------------------------------------------------------------
  function half(h) {  // an IEEE half-precision number (its 16 bits) as a JS number
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e === 0) return s * m * 2 ** -24;
    if (e === 31) return m ? NaN : s * Infinity;
    return s * (1 + m / 1024) * 2 ** (e - 15);
  }

  function unpack(p) {
    const key = ["f64", "f32", "f16", "u8"].find(k => p[k] !== undefined);
    const bin = atob(p[key]);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    let data;
    if (key === "f64") data = new Float64Array(bytes.buffer);
    else if (key === "f32") data = new Float32Array(bytes.buffer);
    else if (key === "u8") data = bytes;
    else data = Float32Array.from(new Uint16Array(bytes.buffer), half);  // widened, exact
    data.shape = p.shape;
    return data;
  }

  // --- numbers as Python formats them ----------------------------------------------------------
  // Python's f"{v:.{d}f}": the sign stays on a negative number that rounds to zero, and a
  // value exactly halfway (0.0625 to three places: a share of 256) rounds to the even
  // digit, where toFixed rounds up. toFixed(d + 60) is the exact decimal of such a value.
  function fixed(v, d) {
    const a = Math.abs(v), sign = v < 0 || Object.is(v, -0) ? "-" : "";
    const exact = a.toFixed(Math.min(100, d + 60)), cut = exact.indexOf(".") + 1 + d;
    const kept = exact.slice(0, d ? cut : cut - 1);
    const tie = /^50*$/.test(exact.slice(cut));
    return sign + (tie && Number(kept.slice(-1)) % 2 === 0 ? kept : a.toFixed(d));
  }
  function expo(v, d) {  // Python's f"{v:.{d}e}": two exponent digits at least
    const [m, e] = v.toExponential(d).split("e");
    const n = parseInt(e, 10);
    return `${m}e${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
  }

  function general(v, p) {  // Python's f"{v:.{p}g}" (trailing zeros dropped)
    if (v === 0) return Object.is(v, -0) ? "-0" : "0";
    const e = parseInt(v.toExponential(p - 1).split("e")[1], 10);
    if (e < -4 || e >= p) {
      const [m, x] = expo(v, p - 1).split("e");
      return `${m.includes(".") ? m.replace(/\.?0+$/, "") : m}e${x}`;
    }
    const out = fixed(v, p - 1 - e);
    return out.includes(".") ? out.replace(/\.?0+$/, "") : out;
  }

  // --- the chapters' notation -----------------------------------------------------------------
  /* Symbols as MathJax sets them in the text beside the explorer. In the strings below a
     subscript is written x_t or x_{t-1} and a superscript 10^{−4.42}; typeset() draws them as
     <sub> and <sup> in HTML (readouts, labels, notes) and as shifted <tspan>s in the SVG.
     Only text nodes are made, never HTML from a string: the readouts redraw on every step of
     a slider, which MathJax would make slow. The names a state brings into these strings (a
     solver's, a schedule's, a profile's) hold no _ or ^, which would be read as scripts. */
  const SCRIPT = /([_^])(?:\{([^}]*)\}|(.))/gu;
  function scripts(text) {  // [[text, "" | "sub" | "sup"], ...]
    const out = [];
    let at = 0;
    for (const m of text.matchAll(SCRIPT)) {
      out.push([text.slice(at, m.index), ""], [m[2] ?? m[3], m[1] === "_" ? "sub" : "sup"]);
      at = m.index + m[0].length;
    }
    out.push([text.slice(at), ""]);
    return out.filter(([s]) => s);
  }

  // the baseline's shift in em of the text; a script is drawn at 75%, so its own dy is larger
  const SHIFT = {"": 0, sub: 0.25, sup: -0.4};
  function typeset(node, text) {
    const svg = node instanceof SVGElement;
    let now = 0;
    node.replaceChildren(...scripts(text).flatMap(([s, kind]) => {
      if (svg) {  // SVG has no sub or sup, and not every browser draws baseline-shift: dy
        const dy = `${(SHIFT[kind] - now) / (kind ? 0.75 : 1)}em`;
        now = SHIFT[kind];
        return [el("tspan", kind ? {dy, "font-size": "75%"} : {dy}, null, s)];
      }
      if (!kind) return [s];
      const e = document.createElement(kind);
      e.textContent = s;
      if (kind === "sub") return [e];
      // a screen reader says 10<sup>−4</sup> as "10 −4": the power in words, unseen
      const said = document.createElement("span");
      said.className = "bx-sr";
      said.textContent = " to the power ";
      return [said, e];
    }));
    return node;
  }

  // the same text for an aria attribute: Unicode's subscripts where it has them, powers in words
  const SUBS = Object.fromEntries([..."0123456789aehijklmnoprstuvx"].map((c, i) =>
    [c, [..."₀₁₂₃₄₅₆₇₈₉ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ"][i]]));
  const plain = text => scripts(text).map(([s, kind]) => kind === "sup" ? ` to the power ${s}`
    : kind === "sub" && [...s].every(c => SUBS[c]) ? [...s].map(c => SUBS[c]).join("") : s)
    .join("");
  const power = e => `10^{${String(e).replace("-", "−")}}`;  // a true minus, as MathJax's

  // --- SVG ------------------------------------------------------------------------------------
  function el(tag, attrs = {}, parent = null, text = null) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== null) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  // an SVG text in the chapters' notation (typeset)
  const tex = (parent, attrs, text) => typeset(el("text", attrs, parent), text);

  function ticks(lo, hi, n = 5) {
    const span = hi - lo, raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map(f => f * mag).find(s => span / s <= n) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out;
  }

  const tickText = v => String(Number(v.toPrecision(6)));
  const logTick = v => v >= 1e-2 && v <= 1e3 ? tickText(v) : power(Math.round(Math.log10(v)));

  /* An axes box in an SVG: frame, ticks, labels; sx and sy map data to pixels. */
  function axes(svg, box, xlim, ylim, opt = {}) {
    const g = el("g", {}, svg);
    const [x0, x1] = xlim, [y0, y1] = ylim;
    const lx = opt.logx ? Math.log10 : v => v, ly = opt.logy ? Math.log10 : v => v;
    const sx = v => box.x + (lx(v) - lx(x0)) / (lx(x1) - lx(x0)) * box.w;
    const sy = v => box.y + box.h - (ly(v) - ly(y0)) / (ly(y1) - ly(y0)) * box.h;
    const under = el("g", {}, g);
    const plot = el("g", {}, g);
    el("rect", {x: box.x, y: box.y, width: box.w, height: box.h, class: "bx-frame"}, g);
    const tk = (lo, hi, log, n) => log
      ? ticks(Math.ceil(Math.log10(lo)), Math.floor(Math.log10(hi)), n).filter(Number.isInteger)
        .map(e => 10 ** e) : ticks(lo, hi, n).filter(v => !opt.integer || Number.isInteger(v));
    if (!opt.noxticks) {
      for (const v of tk(x0, x1, opt.logx, opt.nx || 5)) {
        el("line", {x1: sx(v), x2: sx(v), y1: box.y + box.h, y2: box.y + box.h + 4,
                    class: "bx-axis"}, g);
        tex(g, {x: sx(v), y: box.y + box.h + 15, class: "bx-tick", "text-anchor": "middle"},
            opt.logx ? logTick(v) : tickText(v));
      }
    }
    if (!opt.noyticks) {
      for (const v of tk(y0, y1, opt.logy, opt.ny || 4)) {
        el("line", {x1: box.x - 4, x2: box.x, y1: sy(v), y2: sy(v), class: "bx-axis"}, g);
        tex(g, {x: box.x - 6, y: sy(v) + 4, class: "bx-tick", "text-anchor": "end"},
            opt.logy ? logTick(v) : tickText(v));
      }
    }
    if (opt.xlabel) tex(g, {x: box.x + box.w / 2, y: box.y + box.h + 31,
                            class: "bx-label", "text-anchor": "middle"}, opt.xlabel);
    if (opt.ylabel) tex(g, {x: 0, y: 0, class: "bx-label", "text-anchor": "middle",
                            transform: `translate(${box.x - 38},${box.y + box.h / 2}) rotate(-90)`},
                        opt.ylabel);
    if (opt.title) tex(g, {x: box.x + box.w / 2, y: box.y - 8, class: "bx-title",
                           "text-anchor": "middle"}, opt.title);
    const clip = `bx-clip-${Math.random().toString(36).slice(2)}`;
    const cp = el("clipPath", {id: clip}, g);
    el("rect", {x: box.x, y: box.y, width: box.w, height: box.h}, cp);
    plot.setAttribute("clip-path", `url(#${clip})`);
    under.setAttribute("clip-path", `url(#${clip})`);
    return {g, plot, under, sx, sy, box};
  }

  const pathOf = (xs, ys, sx, sy) => {
    let d = "";
    for (let i = 0; i < xs.length; i++) {
      if (!Number.isFinite(ys[i])) continue;
      d += `${d ? "L" : "M"}${sx(xs[i]).toFixed(2)},${sy(ys[i]).toFixed(2)}`;
    }
    return d;
  };

  // where: "right" or "left" (top corners), "lower left" or "lower right"
  function legend(ax, items, where = "right") {
    const g = el("g", {class: "bx-legend"}, ax.g);
    const w = Math.max(...items.map(i => i.label.length)) * 6.3 + 34, h = items.length * 16 + 6;
    const x = where.endsWith("left") ? ax.box.x + 6 : ax.box.x + ax.box.w - w - 6;
    const y = where.startsWith("lower") ? ax.box.y + ax.box.h - h - 6 : ax.box.y + 6;
    el("rect", {x, y, width: w, height: h, rx: 3, class: "bx-legend-box"}, g);
    items.forEach((it, k) => {
      const yy = y + 13 + 16 * k;
      if (it.marker) el("circle", {cx: x + 14, cy: yy - 4, r: 3.5, fill: it.color}, g);
      else el("line", {x1: x + 4, x2: x + 24, y1: yy - 4, y2: yy - 4, stroke: it.color,
                       "stroke-width": it.width || 2, "stroke-dasharray": it.dash || "",
                       opacity: it.opacity || 1}, g);
      el("text", {x: x + 28, y: yy, class: "bx-legend-text"}, g, it.label);
    });
  }

  // --- controls -------------------------------------------------------------------------------
  let uid = 0;
  function slider(root, c, onchange) {
    const id = `bx-${++uid}`;
    const wrap = document.createElement("div");
    wrap.className = "bx-control";
    const label = document.createElement("label");
    label.htmlFor = id;
    typeset(label, c.label);
    const input = document.createElement("input");
    Object.assign(input, {type: "range", id, min: 0, max: c.values.length - 1, step: 1});
    input.dataset.name = c.name;
    let k = c.values.findIndex(v => Math.abs(v - c.value) < 1e-9);
    input.value = k < 0 ? 0 : k;
    const out = document.createElement("output");
    out.htmlFor = id;
    const show = () => {
      const v = c.values[+input.value];
      out.textContent = v.toFixed(c.digits);
      input.setAttribute("aria-valuetext", `${plain(c.label)} ${v.toFixed(c.digits)}`);
    };
    input.dataset.initial = input.value;  // the chapter's setting, for the reset button
    input.addEventListener("input", () => { show(); onchange(); });
    show();
    wrap.append(label, ...equationLink(c.equation), input, out);
    root.appendChild(wrap);  // in the explorer first: the play button listens on it
    if (c.play) wrap.append(player(input, c, () => { show(); onchange(); }));
    return () => c.values[+input.value];
  }

  /* A link to the chapter's equation that a control moves, numbered as the page numbers
     it (none when the page has no such equation). */
  function equationLink(label) {
    const eq = label && document.getElementById(`equation-${label}`);
    const number = eq && (eq.querySelector(".eqno") || eq).textContent.match(/\((\d+\.\d+)\)/);
    if (!number) return [];
    const a = document.createElement("a");
    a.className = "bx-eq";
    a.href = `#equation-${label}`;
    a.textContent = `(${number[1]})`;
    a.title = `equation (${number[1]}), which this control moves`;
    return [a];
  }

  /* Play/pause for a step slider: from here (or from the start, at the end) to the last
     position; the reader's own move, or reset, stops it. */
  function player(input, c, moved) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "bx-button bx-play";
    let timer = null;
    const label = playing => {
      btn.textContent = playing ? "❚❚" : "▶";
      btn.setAttribute("aria-label", `${playing ? "pause" : "play"} ${plain(c.label)}`);
    };
    const stop = () => { clearInterval(timer); timer = null; label(false); };
    // about a hundred frames for a long slider; a short one steps slowly enough to read
    const last = c.values.length - 1, stride = Math.max(1, Math.round(last / 100));
    const every = Math.max(90, Math.min(400, 4000 / last));
    btn.addEventListener("click", () => {
      if (timer) return stop();
      if (+input.value >= last) { input.value = 0; moved(); }
      label(true);
      timer = setInterval(() => {
        input.value = Math.min(+input.value + stride, last);
        moved();
        if (+input.value >= last) stop();
      }, every);
    });
    for (const ev of ["pointerdown", "keydown"]) input.addEventListener(ev, stop);
    input.closest(".book-explorer").addEventListener("bx-stop", stop);
    label(false);
    return btn;
  }

  /* Radio buttons; colors: each option's colour in the figure, shown beside its label (the
     figure's key). */
  function choice(root, name, legendText, options, value, onchange, colors = null) {
    const fs = document.createElement("fieldset");
    fs.className = "bx-control bx-choice";
    const lg = document.createElement("legend");
    lg.textContent = legendText;
    fs.appendChild(lg);
    const group = `bx-${++uid}`;
    for (const o of options) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      Object.assign(input, {type: "radio", name: group, value: o, checked: o === value});
      input.dataset.name = name;
      input.dataset.initial = o === value ? "1" : "0";
      input.addEventListener("change", onchange);
      label.append(input, ` ${o}`);
      if (colors) {
        const key = document.createElement("span");
        key.className = "bx-swatch";
        key.style.background = colors[options.indexOf(o)];
        label.append(key);
      }
      fs.appendChild(label);
    }
    root.appendChild(fs);
    return () => fs.querySelector("input:checked").value;
  }

  function frame(root, width, height, label) {
    const controls = document.createElement("div");
    controls.className = "bx-controls";
    const readout = document.createElement("p");
    readout.className = "bx-readout";
    readout.setAttribute("aria-live", "polite");
    const svg = el("svg", {viewBox: `0 0 ${width} ${height}`, class: "bx-figure", role: "img",
                           "aria-label": plain(label)});
    root.append(controls, readout, svg);
    const f = {controls, readout, svg, root};
    /* Side by side in the text column; stacked, at a readable size, on a phone. */
    f.narrow = () => root.clientWidth < 560;
    f.size = (w, h) => svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    return f;
  }

  // redraw every explorer when the column changes between wide and narrow
  const redraws = [];
  let wasNarrow = null;
  window.addEventListener("resize", () => {
    const now = redraws.map(r => r.f.narrow()).join();
    if (now !== wasNarrow) { wasNarrow = now; redraws.forEach(r => r.draw()); }
  });
  /* Every explorer ends its controls with a reset to the chapter's setting. */
  function register(f, draw) {
    const reset = document.createElement("button");
    reset.type = "button";
    reset.className = "bx-button bx-reset";
    reset.textContent = "reset";
    reset.addEventListener("click", () => {
      f.root.dispatchEvent(new Event("bx-stop"));
      for (const i of f.controls.querySelectorAll("input")) {
        if (i.type === "range") i.value = i.dataset.initial;
        else i.checked = i.dataset.initial === "1";
      }
      // each slider shows its value again; the last one's event redraws the figure
      f.controls.querySelectorAll("input[type=range]").forEach(i =>
        i.dispatchEvent(new Event("input")));
      draw();
    });
    f.controls.insertBefore(reset, f.controls.querySelector(".bx-hint"));
    // the notes under the figure, so that the controls alone stay on a phone's screen
    f.root.append(...f.controls.querySelectorAll(".bx-hint"));
    redraws.push({f, draw});
    draw();
  }

  /* A note under the figure (register moves it there): what the explorer shows and how. */
  function hint(f, text) {
    const note = document.createElement("p");
    note.className = "bx-hint";
    typeset(note, text);
    f.controls.appendChild(note);
  }

  const clear = svg => { while (svg.firstChild) svg.removeChild(svg.firstChild); };
  const normal = (x, m, s) => Math.exp(-0.5 * ((x - m) / s) ** 2) / (s * Math.sqrt(2 * Math.PI));
  const idx = (values, v) => values.findIndex(u => Math.abs(u - v) < 1e-9);

  // --- chapter 2: KL(p||q) and KL(q||p) ---------------------------------------------------------
  function kl(root, st) {
    const f = frame(root, 640, 300, "the target density p and the Gaussian q");
    const x = unpack(st.x), p = unpack(st.p), fwd = unpack(st.fwd), rev = unpack(st.rev);
    const [cm, cs] = st.controls;
    const draw = () => {
      const mu = getMu(), sd = getSd();
      const k = idx(cs.values, sd) * cm.values.length + idx(cm.values, mu);
      const title = `KL(p‖q) = ${fixed(fwd[k], 3)}    KL(q‖p) = ${fixed(rev[k], 3)}`;
      f.readout.textContent = title;  // the widget's title, above the figure
      clear(f.svg);
      const q = Array.from(x, v => normal(v, mu, sd));
      const top = 1.05 * Math.max(...p, ...q);
      const nw = f.narrow();
      f.size(nw ? 360 : 640, nw ? 250 : 270);
      const ax = axes(f.svg, nw ? {x: 50, y: 8, w: 298, h: 200} : {x: 60, y: 8, w: 560, h: 220},
                      [-6, 6], [0, top], {xlabel: "x", ylabel: "density"});
      const d = pathOf(x, p, ax.sx, ax.sy);
      el("path", {d: `${d}L${ax.sx(6)},${ax.sy(0)}L${ax.sx(-6)},${ax.sy(0)}Z`, fill: C[0],
                  opacity: 0.3}, ax.plot);
      el("path", {d: pathOf(x, q, ax.sx, ax.sy), stroke: C[1], "stroke-width": 2, fill: "none"},
         ax.plot);
      legend(ax, [{label: "p (target)", color: C[0], width: 8, opacity: 0.3},
                  {label: `q = N(${fixed(mu, 2)}, ${fixed(sd, 2)}²)`, color: C[1]}]);
    };
    const getMu = slider(f.controls, cm, draw), getSd = slider(f.controls, cs, draw);
    register(f, draw);
  }

  // --- chapter 3: q against the exact posterior, the ELBO and its terms ---------------------
  function elbo(root, st) {
    const f = frame(root, 680, 300, "q against the posterior, and the terms of the ELBO");
    const T = Object.fromEntries(Object.entries(st.terms).map(([k, v]) => [k, unpack(v)]));
    const [cm, cs] = st.controls, [pm, ps] = st.posterior;
    const hint = document.createElement("p");
    hint.className = "bx-hint";
    hint.textContent = `posterior: mean ${fixed(pm, 3)}, std ${fixed(ps, 3)}`;
    const draw = () => {
      const m = getM(), s = getS();
      const k = idx(cs.values, s) * cm.values.length + idx(cm.values, m);
      const title = `gap = KL(q‖p(z|x)) = ${fixed(T.gap[k], 3)} nats`;
      const names = ["log p(x)", "ELBO", "𝔼_q log p(x|z)", "−KL(q‖p(z))"];
      const vals = [T.log_px[k], T.elbo[k], T.reconstruction[k], -T.kl_prior[k]];
      typeset(f.readout, `${title}; ` + names.map((n, i) => `${n} = ${fixed(vals[i], 3)}`)
        .join(", "));
      clear(f.svg);
      const z = Array.from({length: 400}, (_, i) => -4 + 8 * i / 399);
      const curves = [[z.map(v => normal(v, 0, 1)), "gray", "2,3", 1.5, "p(z)"],
                      [z.map(v => normal(v, pm, ps)), C[0], "", 2, "p(z|x)"],
                      [z.map(v => normal(v, m, s)), C[1], "6,3", 2, "q(z|x)"]];
      const top = 1.05 * Math.max(...curves.flatMap(c => c[0]));
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 520 : 290);
      const ax = axes(f.svg, nw ? {x: 40, y: 20, w: 305, h: 200} : {x: 50, y: 30, w: 300, h: 220},
                      [-4, 4], [0, top], {xlabel: "z"});
      for (const [ys, col, dash, w] of curves) {
        el("path", {d: pathOf(z, ys, ax.sx, ax.sy), stroke: col, "stroke-dasharray": dash,
                    "stroke-width": w, fill: "none"}, ax.plot);
      }
      legend(ax, curves.map(c => ({label: c[4], color: c[1], dash: c[2]})), "left");
      const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals), pad = 0.05 * (hi - lo || 1);
      const bb = nw ? {x: 140, y: 300, w: 205, h: 180} : {x: 475, y: 30, w: 190, h: 220};
      const bx = axes(f.svg, bb, [lo - pad, hi + pad], [0, 4],
                      {noyticks: true, xlabel: "nats", nx: 3});
      el("text", {x: bb.x + bb.w, y: bb.y - 8, class: "bx-title", "text-anchor": "end"}, f.svg,
         title);
      names.forEach((n, i) => {
        const y0 = bx.sy(4 - i - 0.1), y1 = bx.sy(3 - i + 0.1);
        const a = bx.sx(Math.min(0, vals[i])), b = bx.sx(Math.max(0, vals[i]));
        el("rect", {x: a, y: y0, width: Math.max(b - a, 0.5), height: y1 - y0, fill: C[i]},
           bx.plot);
        tex(f.svg, {x: bb.x - 5, y: (y0 + y1) / 2 + 4, class: "bx-tick", "text-anchor": "end"},
            n);
      });
      el("line", {x1: bx.sx(0), x2: bx.sx(0), y1: bb.y, y2: bb.y + bb.h, class: "bx-axis"},
         bx.g);
    };
    const getM = slider(f.controls, cm, draw), getS = slider(f.controls, cs, draw);
    f.controls.appendChild(hint);
    register(f, draw);
  }

  // --- chapter 5: the pinned model's gap and samples --------------------------------------
  function pinned(root, st) {
    const f = frame(root, 700, 300, "the gap over (t, s) and the model's samples");
    const gap = unpack(st.gap), map = unpack(st.map), vir = unpack(st.viridis);
    const hist = unpack(st.hist), edges = unpack(st.edges), vars = unpack(st.var);
    const [ct, cs] = st.controls, sigma = st.sigma, mu = st.mu;
    const [n1, n0] = map.shape;  // (s, t)
    let lo = Infinity, hi = -Infinity;
    for (const v of map) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const canvas = document.createElement("canvas");
    canvas.width = n0;
    canvas.height = n1;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(n0, n1);
    for (let i = 0; i < n1; i++) {
      for (let j = 0; j < n0; j++) {
        const c = Math.min(255, Math.max(0, Math.round((map[i * n0 + j] - lo) / (hi - lo) * 255)));
        const o = ((n1 - 1 - i) * n0 + j) * 4;
        for (let ch = 0; ch < 3; ch++) img.data[o + ch] = Math.round(255 * vir[3 * c + ch]);
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    const heat = canvas.toDataURL();
    const draw = () => {
      const t = getT(), s = getS();
      const it = idx(ct.values, t), is = idx(cs.values, s);
      const g = gap[is * ct.values.length + it];
      f.readout.textContent = `gap ${fixed(g, 3)} nats at t = ${t.toFixed(2)}, s = ` +
        `${s.toFixed(2)}; model samples, var ${fixed(vars[is], 2)}; data, var ` +
        `${fixed(sigma ** 2, 2)}`;
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 700, nw ? 560 : 290);
      const [t0, t1] = st.map_t, [s0, s1] = st.map_s;
      const ax = axes(f.svg, nw ? {x: 50, y: 10, w: 230, h: 220} : {x: 50, y: 10, w: 250, h: 230},
                      [t0, t1], [s0, s1],
                      {xlabel: "encoder std t", ylabel: "decoder std s"});
      el("image", {href: heat, x: ax.box.x, y: ax.box.y, width: ax.box.w, height: ax.box.h,
                   preserveAspectRatio: "none", style: "image-rendering: pixelated"}, ax.under);
      el("line", {x1: ax.sx(t0), y1: ax.sy(sigma * t0), x2: ax.sx(t1), y2: ax.sy(sigma * t1),
                  stroke: "white", "stroke-dasharray": "5,3"}, ax.plot);
      el("path", {d: star(ax.sx(1), ax.sy(sigma), 8), fill: "red"}, ax.plot);
      el("circle", {cx: ax.sx(t), cy: ax.sy(s), r: 5, fill: "white", stroke: "black"}, ax.plot);
      // colour bar
      const cb = {x: ax.box.x + ax.box.w + 8, y: ax.box.y, w: 10, h: ax.box.h};
      const grad = `bx-grad-${root.dataset.uid}`;
      const lg = el("linearGradient", {id: grad, x1: 0, y1: 1, x2: 0, y2: 0}, f.svg);
      for (let k = 0; k <= 8; k++) {
        const c = Math.round(255 * k / 8);
        el("stop", {offset: k / 8, "stop-color": `rgb(${[0, 1, 2].map(ch =>
          Math.round(255 * vir[3 * c + ch])).join(",")})`}, lg);
      }
      el("rect", {...cb, width: cb.w, height: cb.h, fill: `url(#${grad})`}, f.svg);
      for (const v of ticks(lo, hi, 4)) {
        const y = cb.y + cb.h - (v - lo) / (hi - lo) * cb.h;
        el("text", {x: cb.x + 14, y: y + 4, class: "bx-tick"}, f.svg, tickText(v));
      }
      tex(f.svg, {x: 0, y: 0, class: "bx-label", "text-anchor": "middle",
                  transform: `translate(${cb.x + 44},${cb.y + cb.h / 2}) rotate(90)`},
          "log_{10} gap (nats)");
      // samples against the data density
      const e = edges.subarray(is * (hist.shape[1] + 1), (is + 1) * (hist.shape[1] + 1));
      const h = hist.subarray(is * hist.shape[1], (is + 1) * hist.shape[1]);
      const xs = Array.from({length: 300}, (_, i) => mu - 5 * sigma + 10 * sigma * i / 299);
      const dens = xs.map(v => normal(v, mu, sigma));
      // headroom above the peak for the legend's two rows, so it never hides the histogram
      const box = nw ? {x: 50, y: 290, w: 295, h: 220} : {x: 415, y: 10, w: 270, h: 230};
      const top = 1.05 * Math.max(...h, ...dens) / (1 - (2 * 16 + 6 + 12) / box.h);
      const lo2 = Math.min(e[0], xs[0]), hi2 = Math.max(e[e.length - 1], xs[xs.length - 1]);
      const bx = axes(f.svg, box, [lo2, hi2], [0, top],
                      {xlabel: "x (one coordinate)"});
      for (let k = 0; k < h.length; k++) {
        el("rect", {x: bx.sx(e[k]), y: bx.sy(h[k]), width: bx.sx(e[k + 1]) - bx.sx(e[k]),
                    height: bx.sy(0) - bx.sy(h[k]), fill: C[0], opacity: 0.5}, bx.plot);
      }
      el("path", {d: pathOf(xs, dens, bx.sx, bx.sy), stroke: "currentColor",
                  "stroke-width": 1.5, fill: "none", class: "bx-ink"}, bx.plot);
      legend(bx, [{label: `model samples, var ${fixed(vars[is], 2)}`, color: C[0], width: 8,
                   opacity: 0.5}, {label: `data, var ${fixed(sigma ** 2, 2)}`,
                                   color: "currentColor"}]);
    };
    const getT = slider(f.controls, ct, draw), getS = slider(f.controls, cs, draw);
    register(f, draw);
  }

  function star(cx, cy, r) {
    let d = "";
    for (let k = 0; k < 10; k++) {
      const a = -Math.PI / 2 + k * Math.PI / 5, rr = k % 2 ? r * 0.45 : r;
      d += `${k ? "L" : "M"}${(cx + rr * Math.cos(a)).toFixed(2)},${(cy + rr * Math.sin(a)).toFixed(2)}`;
    }
    return `${d}Z`;
  }

  // --- chapter 6: the 2-D VAE's decoder at (z[0], z[1]) ---------------------------------------
  function latent(root, st) {
    const f = frame(root, 300, 300, "the decoder's mean image at the chosen latent point");
    const layers = st.layers.map(l => ({W: unpack(l.W), b: unpack(l.b)}));
    const [c0, c1] = st.controls;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 28;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(28, 28);
    const decode = z => {  // ReLU between the linear layers, a sigmoid at the end
      let h = Float64Array.from(z);
      layers.forEach(({W, b}, k) => {
        const [n, m] = W.shape, out = new Float64Array(n);
        for (let i = 0; i < n; i++) {
          let a = b[i];
          for (let j = 0; j < m; j++) a += W[i * m + j] * h[j];
          out[i] = k < layers.length - 1 ? Math.max(a, 0) : 1 / (1 + Math.exp(-a));
        }
        h = out;
      });
      return h;
    };
    const draw = () => {
      const z = [get0(), get1()], p = decode(z);
      root.bxImage = p;  // what is drawn, for tests/test_browser.py to hold to Python
      f.readout.textContent = `z = (${fixed(z[0], 2)}, ${fixed(z[1], 2)}): mean pixel ` +
        `${fixed(p.reduce((a, v) => a + v, 0) / p.length, 4)}`;
      for (let i = 0; i < p.length; i++) {  // matplotlib's gray, vmin 0, vmax 1
        const g = Math.round(255 * p[i]);
        img.data.set([g, g, g, 255], 4 * i);
      }
      ctx.putImageData(img, 0, 0);
      clear(f.svg);
      f.size(300, 300);
      el("image", {href: canvas.toDataURL(), x: 10, y: 10, width: 280, height: 280,
                   preserveAspectRatio: "none", style: "image-rendering: pixelated"}, f.svg);
      el("rect", {x: 10, y: 10, width: 280, height: 280, class: "bx-frame"}, f.svg);
    };
    const get0 = slider(f.controls, c0, draw), get1 = slider(f.controls, c1, draw);
    f.svg.style.maxWidth = "300px";
    register(f, draw);
  }

  // --- chapter 8: the forward process on the mixture ----------------------------------------
  function forward(root, st) {
    const f = frame(root, 680, 300, "samples of x_t on the mixture, and the schedules");
    const ab = Object.fromEntries(st.schedules.map(k => [k, unpack(st.alpha_bar[k])]));
    // the log-SNR axis holds every schedule's whole curve (the cosine one ends near -8.6)
    const lsnr = Object.fromEntries(st.schedules.map(k =>
      [k, Array.from(ab[k], v => Math.log10(v / (1 - v)))]));
    const finite = Object.values(lsnr).flat().filter(Number.isFinite);
    const snrRange = [Math.floor(Math.min(...finite)), Math.ceil(Math.max(...finite))];
    const x0 = unpack(st.x0), eps = unpack(st.eps), n = x0.shape[0];
    const ct = st.controls[0];
    const state = () => {
      const t = getT(), sched = getSched();
      return {t, sched, a: t === 0 ? 1 : ab[sched][t - 1]};
    };
    const draw = () => {
      const {t, sched, a} = state();
      const snr = a / (1 - a);
      const ratio = t === 0 ? "infinite" : `= ${power(fixed(Math.log10(snr), 2))}`;
      typeset(f.readout, `t = ${t}, ${sched} schedule: ᾱ_t = ${fixed(a, 4)}, ` +
        `SNR = ᾱ_t/(1 − ᾱ_t) ${ratio}`);
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 600 : 300);
      const ax = axes(f.svg, nw ? {x: 40, y: 20, w: 290, h: 290} : {x: 40, y: 20, w: 250, h: 250},
                      [-2.6, 2.6], [-2.6, 2.6],
                      {title: `x_t, t = ${t}`, nx: 4, ny: 4});
      const ra = Math.sqrt(a), rb = Math.sqrt(1 - a), xt = new Float64Array(2 * n);
      let d = "";
      for (let i = 0; i < n; i++) {
        const x = ra * x0[2 * i] + rb * eps[2 * i], y = ra * x0[2 * i + 1] + rb * eps[2 * i + 1];
        xt[2 * i] = x;
        xt[2 * i + 1] = y;
        d += `M${ax.sx(x).toFixed(1)},${ax.sy(y).toFixed(1)}h0`;
      }
      root.bxPoints = xt;  // what is drawn, for tests/test_browser.py to hold to Python
      el("path", {d, stroke: C[0], "stroke-width": 3, "stroke-linecap": "round"}, ax.plot);
      for (const [mx, my] of st.means) {
        const X = ax.sx(ra * mx), Y = ax.sy(ra * my);
        el("path", {d: `M${X - 5},${Y - 5}L${X + 5},${Y + 5}M${X - 5},${Y + 5}L${X + 5},${Y - 5}`,
                    stroke: C[1], "stroke-width": 2}, ax.plot);
      }
      const ts = Array.from({length: st.T}, (_, i) => i + 1);
      const top = axes(f.svg, nw ? {x: 60, y: 350, w: 280, h: 90} : {x: 380, y: 20, w: 285, h: 100},
                       [0, st.T], [0, 1],
                       {ny: 2, noxticks: true, ylabel: "ᾱ_t"});
      const bot = axes(f.svg, nw ? {x: 60, y: 465, w: 280, h: 90} : {x: 380, y: 150, w: 285, h: 100},
                       [0, st.T], snrRange,
                       {ny: 3, xlabel: "t", ylabel: "log_{10} SNR"});
      st.schedules.forEach((k, c) => {
        const a_ = ab[k];
        el("path", {d: pathOf(ts, a_, top.sx, top.sy), stroke: C[c], "stroke-width": 2,
                    fill: "none", opacity: k === sched ? 1 : 0.45}, top.plot);
        el("path", {d: pathOf(ts, lsnr[k], bot.sx, bot.sy),
                    stroke: C[c], "stroke-width": 2, fill: "none",
                    opacity: k === sched ? 1 : 0.45}, bot.plot);
      });
      for (const a2 of [top, bot]) {
        el("line", {x1: a2.sx(t), x2: a2.sx(t), y1: a2.box.y, y2: a2.box.y + a2.box.h,
                    class: "bx-ink", stroke: "currentColor", "stroke-dasharray": "3,3"}, a2.plot);
      }
      if (t > 0) {
        const c = C[st.schedules.indexOf(sched)];
        el("circle", {cx: top.sx(t), cy: top.sy(a), r: 4, fill: c}, top.plot);
        el("circle", {cx: bot.sx(t), cy: bot.sy(Math.log10(snr)), r: 4, fill: c}, bot.plot);
      }
      legend(top, st.schedules.map((k, c) => ({label: k, color: C[c]})));
    };
    const getT = slider(f.controls, ct, draw);
    const getSched = choice(f.controls, "schedule", "schedule", st.schedules, st.schedules[0],
                            draw);
    register(f, draw);
  }

  // --- chapters 13 and 15: few-step solvers against the exact map --------------------------
  // Python's f"{n:,}": thousands separated by commas
  const grouped = n => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const plural = (n, word) => `${n} ${word}${n > 1 ? "s" : ""}`;

  /* The errors against network evaluations (Heun pays two a step): every solver's median
     (solid) and RMS (dashed), the current step count marked on both. */
  function errorPanel(svg, box, st, err, name, k) {
    const evals = s => st.steps.map(n => (st.evaluations[s] || 1) * n);
    const all = st.solvers.flatMap(s => [...err.rms[s], ...err.median[s]]);
    const lo = 10 ** Math.floor(Math.log10(Math.min(...all)));
    const hi = 10 ** Math.ceil(Math.log10(Math.max(...all)));
    const xs = st.solvers.flatMap(evals);
    const bx = axes(svg, box, [Math.min(...xs), Math.max(...xs)], [lo, hi],
                    {logx: true, logy: true, xlabel: "network evaluations",
                     ylabel: `distance to ${st.ref_short}`});
    st.solvers.forEach((s, j) => {
      const w = s === name ? 2.5 : 1.2, x = evals(s);
      for (const [key, dash] of [["median", ""], ["rms", "5 3"]]) {
        el("path", {d: pathOf(x, err[key][s], bx.sx, bx.sy), stroke: C[j], fill: "none",
                    "stroke-width": w, "stroke-dasharray": dash}, bx.plot);
        el("circle", {cx: bx.sx(x[k]), cy: bx.sy(err[key][s][k]), r: s === name ? 5 : 3,
                      fill: C[j]}, bx.plot);
      }
    });
    legend(bx, [...st.solvers.map((s, j) => ({label: s, color: C[j]})),
                {label: "median", color: "currentColor", width: 1.2},
                {label: "RMS", color: "currentColor", width: 1.2, dash: "5 3"}],
           "lower left");  // the errors fall from the top left: that corner stays empty
  }

  function solvers(root, st) {
    const f = frame(root, 680, 310, "solver paths and endpoints against the reference");
    const ref = unpack(st.ref);
    const ends = Object.fromEntries(st.solvers.map(k => [k, unpack(st.ends[k])]));
    const paths = Object.fromEntries(st.solvers.map(k => [k, unpack(st.paths[k])]));
    const err = {rms: {}, median: {}};
    for (const key of ["rms", "median"]) {
      for (const s of st.solvers) err[key][s] = unpack(st[key][s]);
    }
    const cn = st.controls[0], P = ref.shape[0], K = paths[st.solvers[0]].shape[1];
    const offsets = [];
    let o = 0;
    for (const n of st.steps) { offsets.push(o); o += n + 1; }
    const draw = () => {
      const n = getN(), name = getSolver(), k = st.steps.indexOf(n);
      const e = ends[name], c = C[st.solvers.indexOf(name)];
      const ev = (st.evaluations[name] || 1) * n;
      f.readout.textContent = `${name}, ${plural(n, "step")} (${plural(ev, "evaluation")}): ` +
        `distance to ${st.ref_label}, RMS ${expo(err.rms[name][k], 2)}, median ` +
        `${expo(err.median[name][k], 2)}; ${st.flips[name][k]} of ${grouped(st.points.n)} ` +
        "points end nearest another mode";
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 640 : 310);
      const ax = axes(f.svg, nw ? {x: 40, y: 20, w: 300, h: 300} : {x: 40, y: 20, w: 260, h: 260},
                      [-2.2, 2.2], [-2.2, 2.2],
                      {nx: 4, ny: 4, title: `${name}, ${plural(n, "step")}`});
      let d = "";
      for (let i = 0; i < P; i++) d += `M${ax.sx(ref[2 * i]).toFixed(1)},` +
        `${ax.sy(ref[2 * i + 1]).toFixed(1)}h0`;
      el("path", {d, stroke: "currentColor", class: "bx-ink", "stroke-width": 6,
                  "stroke-linecap": "round", opacity: 0.25}, ax.plot);
      const pth = paths[name], base = offsets[k];
      for (let i = 0; i < K; i++) {
        let dd = "";
        for (let j = 0; j <= n; j++) {
          const q = ((base + j) * K + i) * 2;
          dd += `${j ? "L" : "M"}${ax.sx(pth[q]).toFixed(1)},${ax.sy(pth[q + 1]).toFixed(1)}`;
        }
        el("path", {d: dd, stroke: c, "stroke-width": 0.8, fill: "none", opacity: 0.7},
           ax.plot);
      }
      d = "";
      const eo = k * P * 2;
      for (let i = 0; i < P; i++) d += `M${ax.sx(e[eo + 2 * i]).toFixed(1)},` +
        `${ax.sy(e[eo + 2 * i + 1]).toFixed(1)}h0`;
      el("path", {d, stroke: c, "stroke-width": 3, "stroke-linecap": "round"}, ax.plot);
      errorPanel(f.svg, nw ? {x: 60, y: 370, w: 280, h: 220} : {x: 410, y: 20, w: 255, h: 230},
                 st, err, name, k);
    };
    const getN = slider(f.controls, cn, draw);
    const getSolver = choice(f.controls, "solver", "solver", st.solvers, st.solvers[0], draw);
    // which points the numbers are over (the chapter's), and which few are drawn
    hint(f, `Numbers over ${st.points.about}. Drawn: the first ${P} of them ` +
      `(grey: ${st.ref_label}; lines: the paths of the first ${K}). Right: the distance ` +
      "against network evaluations (Heun takes two a step), median solid, RMS dashed.");
    register(f, draw);
  }

  // --- chapter 18: T steps of three schedules with the same ends ----------------------------
  function bound(root, st) {
    const f = frame(root, 680, 290, "a schedule's steps, and their terms against the integrand");
    const loss = unpack(st.loss), levels = unpack(st.levels), terms = unpack(st.terms);
    const t = unpack(st.t), lam = unpack(st.lam), dens = unpack(st.density);
    const gam = Object.fromEntries(st.schedules.map(k => [k, unpack(st.gamma[k])]));
    const ct = st.controls[0], Ts = ct.values, nT = Ts.length;
    const lvOff = [], tmOff = [];  // where each (schedule, T) starts in levels and terms
    let a = 0, b = 0;
    st.schedules.forEach(() => Ts.forEach(T => { lvOff.push(a); tmOff.push(b); a += T + 1; b += T; }));
    const draw = () => {
      const T = getT(), name = getSched(), j = st.schedules.indexOf(name);
      const row = j * nT + Ts.indexOf(T), LT = loss[row];
      typeset(f.readout, `${name}, T = ${T}: ℒ_T = ${fixed(LT, 4)} nats, against ` +
        `ℒ_∞ = ${fixed(st.exact, 4)} (exact, the same for the three shapes: they share ` +
        "their ends)");
      clear(f.svg);
      const nw = f.narrow(), c = C[j];
      f.size(nw ? 360 : 680, nw ? 560 : 290);
      const g = levels.subarray(lvOff[row], lvOff[row] + T + 1);
      const ga = axes(f.svg, nw ? {x: 60, y: 24, w: 280, h: 200} : {x: 50, y: 24, w: 230, h: 210},
                      [0, 1], [-10.5, 6.5], {xlabel: "t", ylabel: "γ(t)", ny: 4,
                                             title: `the ${plural(T, "step")}`});
      st.schedules.forEach((k, jj) => {
        el("path", {d: pathOf(t, gam[k], ga.sx, ga.sy), stroke: C[jj], fill: "none",
                    "stroke-width": jj === j ? 2 : 1, opacity: jj === j ? 1 : 0.35}, ga.plot);
      });
      if (T <= 64) {
        for (let i = 0; i <= T; i++) {
          el("circle", {cx: ga.sx(i / T), cy: ga.sy(g[i]), r: 2.5, fill: c}, ga.plot);
        }
      }
      // each step's term, spread over its interval of log SNR (lambda = -gamma)
      const box = nw ? {x: 60, y: 290, w: 280, h: 220} : {x: 360, y: 24, w: 305, h: 210};
      const ta = axes(f.svg, box, [lam[0], lam[lam.length - 1]], [1e-4, 1e4],
                      {logy: true, xlabel: "log SNR", ylabel: "nats per unit of log SNR",
                       title: "the steps' terms, and the integrand"});
      let d = "";
      for (let i = 0; i < T; i++) {
        const hiL = -g[i], loL = -g[i + 1], v = terms[tmOff[row] + i] / (hiL - loL);
        const y = ta.sy(Math.min(Math.max(v, 1e-4), 1e4));
        d += `M${ta.sx(loL).toFixed(1)},${ta.sy(1e-4).toFixed(1)}V${y.toFixed(1)}` +
          `H${ta.sx(hiL).toFixed(1)}V${ta.sy(1e-4).toFixed(1)}`;
      }
      el("path", {d, fill: c, opacity: 0.35, stroke: c, "stroke-width": 0.6}, ta.plot);
      el("path", {d: pathOf(lam, dens, ta.sx, ta.sy), stroke: "currentColor", class: "bx-ink",
                  fill: "none", "stroke-width": 2}, ta.plot);
    };
    const getT = slider(f.controls, ct, draw);
    const getSched = choice(f.controls, "schedule", "schedule", st.schedules, st.schedules[0],
                            draw, st.schedules.map((_, jj) => C[jj]));
    hint(f, "Computed in Python for the chapter's Gaussian with the optimal " +
      "denoiser; the page looks the numbers up. Left: the three schedules, the chosen one's " +
      "levels at its steps (dots up to 64 steps); the learned schedule, at its random " +
      "start, lies close to the linear one. Then each step's term of ℒ_T divided by its " +
      "width in log SNR, so that on a linear scale its area would be the term: at least the " +
      "curve's area over the same interval, since the term takes mmse at the step's noisier " +
      "end. The curve, ½ SNR mmse(SNR), has area ℒ_∞ (log scale, nats per unit of log SNR).");
    register(f, draw);
  }

  // --- chapter 19: the straight-through gradient on the toy quantizer ------------------------
  function straight(root, st) {
    const f = frame(root, 680, 300, "the codes' cells, the loss, and two gradients at z_e");
    const num = unpack(st.numbers), code = unpack(st.code), cells = unpack(st.cells);
    const heat = unpack(st.heat), [c1, c2] = st.controls, n = c1.values.length, span = st.span;
    const [gy, gx] = st.cells.shape;
    let lo = Infinity, hi = -Infinity;
    for (const v of heat) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const image = paint => {  // a gx x gy picture of the plane, row 0 at the bottom
      const cv = document.createElement("canvas");
      cv.width = gx;
      cv.height = gy;
      const ctx = cv.getContext("2d"), img = ctx.createImageData(gx, gy);
      for (let r = 0; r < gy; r++) {
        for (let c = 0; c < gx; c++) img.data.set(paint(r * gx + c), ((gy - 1 - r) * gx + c) * 4);
      }
      ctx.putImageData(img, 0, 0);
      return cv.toDataURL();
    };
    const rgb = h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16));
    const tint = image(i => [...rgb(C[cells[i]]), 70]);
    const shade = image(i => [31, 95, 168, Math.round(200 * (heat[i] - lo) / (hi - lo))]);
    const draw = () => {
      const a = getZ1(), b = getZ2(), i = idx(c2.values, b) * n + idx(c1.values, a);
      const v = j => num[6 * i + j], k = code[i], e = st.codes[k];
      const diff = Math.hypot(v(2) - v(4), v(3) - v(5)), dist = Math.hypot(a - e[0], b - e[1]);
      typeset(f.readout, `z_e = (${fixed(a, 1)}, ${fixed(b, 1)}): code ${k}, ` +
        `(${general(e[0], 3)}, ${general(e[1], 3)}); ℒ(z_q) = ${fixed(v(1), 4)}, ℒ(z_e) = ` +
        `${fixed(v(0), 4)}; straight-through gradient (${fixed(v(4), 3)}, ` +
        `${fixed(v(5), 3)}), gradient at z_e (${fixed(v(2), 3)}, ${fixed(v(3), 3)}): ` +
        `${fixed(diff, 3)} apart, ${fixed(dist, 3)} from the code`);
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 690 : 312);
      const boxes = nw ? [{x: 60, y: 24, w: 280, h: 280}, {x: 60, y: 370, w: 280, h: 280}]
        : [{x: 55, y: 24, w: 250, h: 250}, {x: 405, y: 24, w: 250, h: 250}];
      [["the codes' cells", tint], ["ℒ(z), no quantizer", shade]].forEach(([title, pic], r) => {
        const ax = axes(f.svg, boxes[r], [-span, span], [-span, span],
                        {title, nx: 4, ny: 4, xlabel: "first coordinate",
                         ylabel: "second coordinate"});
        el("image", {href: pic, x: ax.box.x, y: ax.box.y, width: ax.box.w, height: ax.box.h,
                     preserveAspectRatio: "none"}, ax.under);
        st.codes.forEach(([x, y], kk) => {
          const X = ax.sx(x), Y = ax.sy(y);
          el("path", {d: `M${X},${Y - 6}L${X + 5},${Y + 4}L${X - 5},${Y + 4}Z`,
                      fill: kk === k ? "black" : "gray"}, ax.plot);
        });
        el("line", {x1: ax.sx(a), y1: ax.sy(b), x2: ax.sx(e[0]), y2: ax.sy(e[1]),
                    stroke: "black", "stroke-dasharray": "2,2"}, ax.plot);
        // the descent directions the encoder would follow: minus each gradient
        for (const [gxv, gyv, col] of [[v(2), v(3), C[1]], [v(4), v(5), C[0]]]) {
          const X2 = ax.sx(a - 0.4 * gxv), Y2 = ax.sy(b - 0.4 * gyv);
          el("line", {x1: ax.sx(a), y1: ax.sy(b), x2: X2, y2: Y2, stroke: col,
                      "stroke-width": 2.5}, ax.plot);
          el("circle", {cx: X2, cy: Y2, r: 3, fill: col}, ax.plot);
        }
        el("circle", {cx: ax.sx(a), cy: ax.sy(b), r: 5, fill: "white", stroke: "black"},
           ax.plot);
      });
    };
    const getZ1 = slider(f.controls, c1, draw), getZ2 = slider(f.controls, c2, draw);
    hint(f, "Computed in Python with the chapter's quantizer and loss; the page " +
      "looks the numbers up. The white dot is z_e, the triangles the five codes (its own in " +
      "black, dashed to it). From z_e: minus the gradient of ℒ at z_e (red) and minus " +
      "the straight-through gradient (blue), the slope at the code, each times 0.4. ℒ(z_q) " +
      "is flat inside a cell: its own gradient is zero there. A point on a border between " +
      "two cells (a few of the grid's lie on one) takes the lower-numbered code.");
    register(f, draw);
  }

  // --- chapter 20: the six measures against a corruption's strength ----------------------------
  function corruption(root, st) {
    const f = frame(root, 680, 300, "digits of a corrupted set and its six measures");
    const S = unpack(st.strength), M = unpack(st.measures), I = unpack(st.images);
    const bandLo = unpack(st.clean_lo), bandHi = unpack(st.clean_hi);
    const [K, L, Q] = st.images.shape, names = st.measure_names, nm = names.length;
    const at = (c, l, m) => M[(c * L + l) * nm + m];
    const canvas = document.createElement("canvas");
    canvas.width = 28 * Q;
    canvas.height = 28;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(28 * Q, 28);
    const strength = (c, l) => `${st.units[c]} ${tickText(S[c * L + l])}`;
    const draw = () => {
      const name = getKind(), c = st.corruptions.indexOf(name), l = getLevel();
      level.textContent = strength(c, l);
      levelInput.setAttribute("aria-valuetext", `${name}, ${strength(c, l)}`);
      const shown = names.map((m, j) => `${m} ${j === 0 ? fixed(at(c, l, j), 1)
        : j === 1 ? general(at(c, l, j), 3) : fixed(at(c, l, j), 3)}`);
      f.readout.textContent = `${name} (${strength(c, l)}): ${shown.join(", ")}`;
      for (let q = 0; q < Q; q++) {  // the set's last Q digits, side by side
        for (let i = 0; i < 28 * 28; i++) {
          const g = I[((c * L + l) * Q + q) * 784 + i];
          img.data.set([g, g, g, 255], 4 * ((i / 28 | 0) * 28 * Q + q * 28 + i % 28));
        }
      }
      ctx.putImageData(img, 0, 0);
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 500 : 330);
      const pic = nw ? {x: 12, y: 8, w: 336, h: 336 / Q} : {x: 8, y: 26, w: 168, h: 168 * 2 / Q};
      if (nw) {
        el("image", {href: canvas.toDataURL(), x: pic.x, y: pic.y, width: pic.w, height: pic.h,
                     preserveAspectRatio: "none", style: "image-rendering: pixelated"}, f.svg);
      } else {  // two rows of Q / 2
        const half = Q / 2, w = pic.w / half;
        for (let r = 0; r < 2; r++) {
          const svgImg = el("svg", {x: pic.x, y: pic.y + r * w, width: pic.w, height: w,
                                    viewBox: `${r * half * 28} 0 ${half * 28} 28`,
                                    preserveAspectRatio: "none"}, f.svg);
          el("image", {href: canvas.toDataURL(), x: 0, y: 0, width: 28 * Q, height: 28,
                       style: "image-rendering: pixelated"}, svgImg);
        }
      }
      el("text", {x: pic.x + pic.w / 2, y: nw ? pic.y + pic.h + 14 : pic.y - 8,
                  class: "bx-title", "text-anchor": "middle"}, f.svg, `${name}: ${Q} digits`);
      const levels = Array.from({length: L}, (_, k) => k);
      names.forEach((m, j) => {
        const col = nw ? j % 2 : j % 3, row = nw ? j >> 1 : Math.floor(j / 3);
        const box = nw ? {x: 48 + col * 170, y: pic.y + pic.h + 44 + row * 130, w: 125, h: 90}
          : {x: 240 + col * 150, y: 24 + row * 150, w: 110, h: 100};
        let lo = bandLo[j], hi = bandHi[j];
        for (let cc = 0; cc < K; cc++) {
          for (let k = 0; k < L; k++) { lo = Math.min(lo, at(cc, k, j)); hi = Math.max(hi, at(cc, k, j)); }
        }
        const pad = 0.06 * (hi - lo || 1);
        const ax = axes(f.svg, box, [0, L - 1], [lo - pad, hi + pad],
                        {title: m, nx: 2, ny: 3, xlabel: row === (nw ? 2 : 1) ? "level" : ""});
        el("rect", {x: box.x, y: ax.sy(bandHi[j]), width: box.w,
                    height: ax.sy(bandLo[j]) - ax.sy(bandHi[j]),
                    class: "bx-ink", fill: "currentColor", opacity: 0.15}, ax.under);
        for (let cc = 0; cc < K; cc++) {
          const ys = levels.map(k => at(cc, k, j));
          el("path", {d: pathOf(levels, ys, ax.sx, ax.sy), fill: "none",
                      stroke: cc === c ? C[c % C.length] : "currentColor",
                      "stroke-width": cc === c ? 2 : 0.8, opacity: cc === c ? 1 : 0.25},
             ax.plot);
        }
        el("circle", {cx: ax.sx(l), cy: ax.sy(at(c, l, j)), r: 4, fill: C[c % C.length],
                      stroke: "currentColor"}, ax.plot);
      });
    };
    const getLevel = slider(f.controls, st.controls[0], () => draw());
    const level = f.controls.querySelector(".bx-control:last-child output");
    const levelInput = f.controls.querySelector('input[data-name="level"]');
    const getKind = choice(f.controls, "corruption", "corruption", st.corruptions,
                           st.corruptions[0], draw);
    hint(f, "The numbers are the chapter's run; the page looks them up. Grey band: " +
      "where the chapter's test calls a set no different from clean redraws; the chosen " +
      "corruption in colour, the others faint. Digits: the set's last ones (where the " +
      "copies go).");
    register(f, draw);
  }

  // --- chapter 9: the trained network's reverse chain ---------------------------------------
  function chain(root, st) {
    const f = frame(root, 680, 250, "x_t and the network's guess of x_0 along the reverse chain");
    const Xt = unpack(st.x_t), X0 = unpack(st.x0), snr = unpack(st.snr);
    const ct = st.controls[0], [, S] = st.x_t.shape, T = st.T;
    const lsnr = Array.from(snr, v => Math.log10(v)), ts = Array.from({length: T}, (_, i) => i + 1);
    const rows = [Xt, X0].map(() => {
      const c = document.createElement("canvas");
      c.width = 28 * S;
      c.height = 28;
      return c;
    });
    const draw = () => {
      const t = getT(), k = idx(ct.values, t);
      typeset(f.readout, t === 0 ? "t = 0: the samples" : `t = ${t} of ${T}: SNR ` +
        `ᾱ_t/(1 − ᾱ_t) = ${power(fixed(lsnr[t - 1], 2))}`);
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 370 : 230);
      const pic = nw ? {x: 20, y: 22, w: 320} : {x: 10, y: 22, w: 420};
      const h = pic.w / S;
      [Xt, X0].forEach((X, r) => {
        const ctx = rows[r].getContext("2d"), img = ctx.createImageData(28 * S, 28);
        for (let q = 0; q < S; q++) {
          for (let i = 0; i < 784; i++) {
            const g = X[(k * S + q) * 784 + i];
            img.data.set([g, g, g, 255], 4 * ((i / 28 | 0) * 28 * S + q * 28 + i % 28));
          }
        }
        ctx.putImageData(img, 0, 0);
        const y = pic.y + r * (h + 22);
        tex(f.svg, {x: pic.x, y: y - 6, class: "bx-label"},
            r ? (t ? "the network's guess of x_0" : "the samples") : `x_t, t = ${t}`);
        el("image", {href: rows[r].toDataURL(), x: pic.x, y, width: pic.w, height: h,
                     preserveAspectRatio: "none", style: "image-rendering: pixelated"}, f.svg);
      });
      const box = nw ? {x: 60, y: pic.y + 2 * h + 60, w: 280, h: 110}
        : {x: 490, y: 22, w: 175, h: 160};
      const lo = Math.floor(Math.min(...lsnr)), hi = Math.ceil(Math.max(...lsnr));
      const ax = axes(f.svg, box, [0, T], [lo, hi], {xlabel: "t", ylabel: "log_{10} SNR", ny: 4,
                                                      nx: 3, title: "signal to noise"});
      el("line", {x1: box.x, x2: box.x + box.w, y1: ax.sy(0), y2: ax.sy(0), class: "bx-ink",
                  stroke: "currentColor", "stroke-dasharray": "3,3"}, ax.plot);
      el("path", {d: pathOf(ts, lsnr, ax.sx, ax.sy), stroke: C[0], fill: "none",
                  "stroke-width": 2}, ax.plot);
      el("line", {x1: ax.sx(t), x2: ax.sx(t), y1: box.y, y2: box.y + box.h, class: "bx-ink",
                  stroke: "currentColor", opacity: 0.6}, ax.plot);
      if (t > 0) el("circle", {cx: ax.sx(t), cy: ax.sy(lsnr[t - 1]), r: 4, fill: C[0]}, ax.plot);
    };
    const getT = slider(f.controls, ct, draw);
    hint(f, `From a run of the chapter's ${st.profile} profile (T = ${T}), with ` +
      "its own network, which need not be the run this page's other outputs come from: " +
      `the chain of ${S} samples from t = ${T} down to 0, every ` +
      `${ct.values[0] - ct.values[1]} steps, stored as grey levels; the page looks them ` +
      "up. Above, x_t; below it, the network's guess of x_0 from x_t, which divides by " +
      "√ᾱ_t: near t = T that magnifies the network's small errors, and the picture clips " +
      "them to black and white. The curve: the schedule's signal-to-noise ratio, dashed at 1.");
    register(f, draw);
  }

  // --- chapter 22: a masked model's sentences, unmasked step by step ------------------------
  function textunmasking(root, st) {
    const f = frame(root, 680, 200, "the masked model's sentences, unmasked step by step");
    const ids = unpack(st.ids), when = unpack(st.revealed), [, S, L] = st.ids.shape;
    const chars = Array.from(st.alphabet);  // by code point, as Python counts them
    const K = st.K, n = S * L, pad = chars.length;
    const draw = () => {
      const k = getK(), order = getOrder(), o = st.orders.indexOf(order), c = C[o];
      const at = (s, j) => (o * S + s) * L + j;  // a position's index in ids and when
      let shown = 0, now = 0;
      for (let i = o * n; i < (o + 1) * n; i++) { shown += when[i] <= k; now += when[i] === k; }
      f.readout.textContent = `step ${k} of ${K} (${order} order): ` + (k === 0
        ? `all ${grouped(n)} positions masked`
        : `${grouped(shown)} of ${grouped(n)} positions revealed, ${grouped(now)} new`);
      clear(f.svg);
      // one monospace cell a position, a sentence a line; on a phone the strips of the
      // steps go under the sentences, column under column, else beside them
      const nw = f.narrow(), W = nw ? 360 : 680, x0 = 6;
      const cw = Math.min(10, (nw ? W - 2 * x0 : 450) / L), font = Math.min(16, 1.6 * cw);
      const lh = Math.round(1.5 * font), top = 24;
      el("text", {x: x0, y: top - 10, class: "bx-title"}, f.svg, `the ${S} sentences at step ${k}`);
      for (let s = 0; s < S; s++) {
        const y = top + s * lh;
        for (let j = 0; j < L; j++) {
          const w = when[at(s, j)], id = ids[at(s, j)], x = x0 + j * cw;
          if (w > k) {  // still masked
            el("rect", {x: x + 0.5, y: y + 0.1 * lh, width: cw - 1, height: 0.8 * lh,
                        fill: "currentColor", class: "bx-ink", opacity: 0.25}, f.svg);
            continue;
          }
          if (w === k) el("rect", {x, y, width: cw, height: lh, fill: c, opacity: 0.3}, f.svg);
          const ch = id === pad ? "·" : chars[id];  // padding: a faint dot
          if (ch !== " ") {
            el("text", {x: x + cw / 2, y: y + 0.72 * lh, "text-anchor": "middle",
                        class: `bx-char${w === k ? " bx-new" : ""}`, "font-size": font,
                        fill: w === k ? c : "currentColor", opacity: id === pad ? 0.35 : 1},
               f.svg, ch);
          }
        }
      }
      const strips = nw ? {x: x0, y: top + S * lh + 34, cw, h: 8}
        : {x: x0 + L * cw + 30, y: top, cw: (W - x0 - L * cw - 36) / L, h: lh};
      el("text", {x: strips.x, y: strips.y - 10, class: "bx-title"}, f.svg,
         "the step each position is revealed at");
      for (let s = 0; s < S; s++) {
        for (let j = 0; j < L; j++) {
          const w = when[at(s, j)], y = strips.y + s * strips.h;
          el("rect", {x: strips.x + j * strips.cw, y: y + 0.15 * strips.h, width: strips.cw,
                      height: 0.7 * strips.h, ...(w > k
                        ? {fill: "currentColor", class: "bx-ink", opacity: 0.08}
                        : {fill: c, opacity: 0.15 + 0.85 * (w - 1) / Math.max(1, K - 1)})},
             f.svg);
        }
      }
      f.size(W, Math.ceil(nw ? strips.y + S * strips.h + 6 : top + S * lh + 6));
    };
    const getK = slider(f.controls, st.controls[0], draw);
    const getOrder = choice(f.controls, "order", "order", st.orders, st.orders[0], draw,
                            st.orders.map((_, oo) => C[oo]));
    hint(f, `From a run of the chapter's ${st.profile} profile: ${S} sentences of ${L} ` +
      `positions sampled by its masked model in K = ${K} steps, in each order, recorded ` +
      "after every step; the page looks them up. Grey boxes: masked positions; in colour: " +
      "those revealed at this step; faint dots: padding, after the sentence's end. The " +
      "strips: the step at which each position is revealed, the later the stronger its " +
      "colour; grey while it is still masked.");
    register(f, draw);
  }

  // --- chapter 12: each method's completions under each mask -------------------------------
  function completions(root, st) {
    const f = frame(root, 680, 250, "a test digit, its known pixels and two completions");
    const truth = unpack(st.truth), known = unpack(st.known), comp = unpack(st.completions);
    const num = unpack(st.numbers), [nMe, nMa, K, S] = st.completions.shape;
    const nn = st.number_names.length;
    const at = (me, ma, j) => num[(me * nMa + ma) * nn + j];
    const tiles = 2 + K, canvas = document.createElement("canvas");
    canvas.width = 28 * tiles;
    canvas.height = 28;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(28 * tiles, 28);
    const put = (q, g, i) => img.data.set([g, g, g, 255],
                                          4 * ((i / 28 | 0) * 28 * tiles + q * 28 + i % 28));
    const draw = () => {
      const d = getDigit() - 1, mask = getMask(), method = getMethod();
      const ma = st.masks.indexOf(mask), me = st.methods.indexOf(method);
      const v = j => at(me, ma, j);
      f.readout.textContent = `test digit ${d + 1} of ${S} shown; over the table's ` +
        `${grouped(st.n_digits)} digits × ${K}, ${st.descriptions[ma]}, ${method}: judge ` +
        "accuracy " +
        `${fixed(v(0), 3)}, error on the missing pixels ${fixed(v(2), 3)}, on the known ` +
        `${fixed(v(1), 3)}, spread ${fixed(v(3), 3)}; ${grouped(Math.round(v(4)))} network ` +
        "calls per image";
      for (let i = 0; i < 784; i++) {
        const t = truth[d * 784 + i];
        put(0, t, i);
        put(1, known[(ma * S + d) * 784 + i] ? t : 128, i);
        for (let k = 0; k < K; k++) put(2 + k, comp[(((me * nMa + ma) * K + k) * S + d) * 784 + i], i);
      }
      ctx.putImageData(img, 0, 0);
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 380 : 250);
      const pic = nw ? {x: 20, y: 22, w: 320} : {x: 10, y: 22, w: 340};
      el("image", {href: canvas.toDataURL(), x: pic.x, y: pic.y, width: pic.w,
                   height: pic.w / tiles, preserveAspectRatio: "none",
                   style: "image-rendering: pixelated"}, f.svg);
      ["truth", "known", ...Array.from({length: K}, (_, k) => `completion ${k + 1}`)]
        .forEach((t, q) => el("text", {x: pic.x + (q + 0.5) * pic.w / tiles, y: pic.y - 6,
                                        class: "bx-tick", "text-anchor": "middle"}, f.svg, t));
      // the chapter's table for this mask: every method, the chosen one in colour
      const top = pic.y + pic.w / tiles + 40;
      [[0, "judge accuracy"], [2, "error, missing"]].forEach(([j, title], r) => {
        const vals = st.methods.map((_, mm) => at(mm, ma, j));
        const box = nw ? {x: 130, y: top + r * 115, w: 200, h: 80}
          : {x: 500, y: 22 + r * 110, w: 165, h: 75};
        const bx = axes(f.svg, box, [0, Math.max(1e-9, ...vals) * 1.1], [0, nMe],
                        {noyticks: true, nx: 3, title});
        st.methods.forEach((name, mm) => {
          const y0 = bx.sy(nMe - mm - 0.15), y1 = bx.sy(nMe - mm - 0.85);
          el("rect", {x: bx.sx(0), y: y0, width: bx.sx(vals[mm]) - bx.sx(0), height: y1 - y0,
                      fill: mm === me ? C[0] : "currentColor", class: mm === me ? "" : "bx-ink",
                      opacity: mm === me ? 1 : 0.3}, bx.plot);
          el("text", {x: box.x - 5, y: (y0 + y1) / 2 + 4, class: "bx-tick",
                      "text-anchor": "end"}, f.svg, name);
        });
      });
    };
    const getDigit = slider(f.controls, st.controls[0], draw);
    const getMask = choice(f.controls, "mask", "mask", st.masks, st.masks[0], draw);
    const getMethod = choice(f.controls, "method", "method", st.methods, st.methods[0], draw);
    hint(f, `The chapter's run: the first ${S} test digits, ${K} completions ` +
      "each, stored as grey levels; missing pixels mid grey. The numbers are the chapter's " +
      `table, over its ${grouped(st.n_digits)} test digits, ${K} completions each; the ` +
      "bars compare the methods under the chosen mask.");
    register(f, draw);
  }

  // --- chapter 14: the exact law of unmasking in K steps ---------------------------------
  function unmasking(root, st) {
    const f = frame(root, 680, 300, "the sampler's law against the data's, and its likeliest images");
    const num = unpack(st.numbers), p = unpack(st.p), Q = unpack(st.q), S = unpack(st.states);
    const ck = st.controls[0], Ks = ck.values, nK = Ks.length, N = p.length, D = S.shape[1];
    const side = Math.round(Math.sqrt(D));
    // two decades below the data's least likely image; rarer images of q sit on the floor
    const range = [10 ** (Math.floor(Math.log10(Math.min(...p))) - 2), 1];
    const draw = () => {
      const K = getK(), order = getOrder(), o = st.orders.indexOf(order);
      const row = o * nK + idx(Ks, K), q = Q.subarray(row * N, (row + 1) * N);
      const [kl, H] = [num[2 * row], num[2 * row + 1]];
      f.readout.textContent = `${order} order, K = ${K} (revealing ` +
        `${st.counts[row].join(", ")}): KL(p‖q) = ${fixed(kl, 3)} nats; entropy of q ` +
        `${fixed(H, 3)} nats (the data's ${fixed(st.entropy, 3)})`;
      clear(f.svg);
      const nw = f.narrow(), c = C[o];
      f.size(nw ? 360 : 680, nw ? 860 : 300);
      const ax = axes(f.svg, nw ? {x: 60, y: 24, w: 280, h: 280} : {x: 50, y: 24, w: 220, h: 220},
                      range, range, {logx: true, logy: true, xlabel: "p(x), the data",
                                     ylabel: "q(x), the sampler", title: "512 images"});
      el("line", {x1: ax.sx(range[0]), y1: ax.sy(range[0]), x2: ax.sx(1), y2: ax.sy(1),
                  class: "bx-ink", stroke: "currentColor", "stroke-dasharray": "4,3",
                  opacity: 0.6}, ax.plot);
      let d = "";
      for (let i = 0; i < N; i++) {
        d += `M${ax.sx(p[i]).toFixed(1)},${ax.sy(Math.max(q[i], range[0])).toFixed(1)}h0`;
      }
      el("path", {d, stroke: c, "stroke-width": 4, "stroke-linecap": "round", opacity: 0.6},
         ax.plot);
      // KL and entropy against K, both orders
      const panels = [[0, "KL(p‖q), nats"], [1, "entropy of q, nats"]];
      panels.forEach(([k, title], r) => {
        const ys = st.orders.map((_, oo) => Ks.map((_, j) => num[2 * (oo * nK + j) + k]));
        const all = ys.flat().concat(k ? [st.entropy] : []);
        const box = nw ? {x: 60, y: 360 + r * 150, w: 280, h: 100}
          : {x: 330, y: 24 + r * 135, w: 165, h: 90};
        const bx = axes(f.svg, box, [Ks[0], Ks[nK - 1]], [0, 1.08 * Math.max(...all)],
                        {title, ny: 3, nx: 4, integer: true,
                         xlabel: r === 1 ? "steps K" : "", noxticks: r === 0 && !nw});
        if (k) el("line", {x1: box.x, x2: box.x + box.w, y1: bx.sy(st.entropy),
                           y2: bx.sy(st.entropy), class: "bx-ink", stroke: "currentColor",
                           "stroke-dasharray": "4,3"}, bx.plot);
        ys.forEach((y, oo) => {
          el("path", {d: pathOf(Ks, y, bx.sx, bx.sy), stroke: C[oo], fill: "none",
                      "stroke-width": oo === o ? 2.5 : 1.2}, bx.plot);
          el("circle", {cx: bx.sx(K), cy: bx.sy(y[idx(Ks, K)]), r: oo === o ? 5 : 3,
                        fill: C[oo]}, bx.plot);
        });
      });
      // the likeliest images under q, with q and p
      const tiles = st.top[row], cols = 4, t = nw ? 56 : 30, gap = nw ? 30 : 22;
      const x0 = nw ? 60 : 524, y0 = nw ? 665 : 24;
      el("text", {x: x0 + (cols * (t + 8) - 8) / 2, y: y0 - 8, class: "bx-title",
                  "text-anchor": "middle"}, f.svg, "likeliest under q");
      tiles.forEach((m, j) => {
        const gx = x0 + (j % cols) * (t + 8), gy = y0 + Math.floor(j / cols) * (t + gap);
        for (let i = 0; i < D; i++) {
          const on = S[m * D + i];
          el("rect", {x: gx + (i % side) * t / side, y: gy + Math.floor(i / side) * t / side,
                      width: t / side, height: t / side, fill: on ? "white" : "black"}, f.svg);
        }
        el("rect", {x: gx, y: gy, width: t, height: t, fill: "none", stroke: "gray"}, f.svg);
        el("text", {x: gx + t / 2, y: gy + t + 11, class: "bx-tick", "text-anchor": "middle"},
           f.svg, general(q[m], 2));
      });
    };
    const getK = slider(f.controls, ck, draw);
    const getOrder = choice(f.controls, "order", "order", st.orders, st.orders[0], draw,
                            st.orders.map((_, oo) => C[oo]));
    hint(f, "Exact, not sampled: the law q of the sampler (linear schedule, a " +
      "fixed number of pixels revealed a step) with the toy's exact denoiser, computed in " +
      "Python over every partial state; the page looks it up. The scatter: each of the 512 " +
      "images at its probability under the data (p) and under the sampler (q); on the " +
      "dashed line they agree, and images rarer under q than the axis's floor sit on it. " +
      "The two curves: KL(p‖q) and the entropy of q against K for both orders, the data's " +
      "entropy dashed. The tiles: the sampler's likeliest images, each with its " +
      "probability under q.");
    register(f, draw);
  }

  // --- chapter 16: guided samples against the tilted density ------------------------------
  function guidance(root, st) {
    const f = frame(root, 680, 300, "guided samples over the tilted density, and their moments");
    const stats = unpack(st.stats), X = unpack(st.samples), H = unpack(st.heat);
    const cw = st.controls[0], W = cw.values, n = st.n, [, gy, gx] = st.heat.shape;
    const at = (i, k) => stats[i * 5 + k];  // mean u, tilted, sd u, tilted sd, share in y
    const canvas = document.createElement("canvas");
    canvas.width = gx;
    canvas.height = gy;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(gx, gy);
    const [x0, x1, y0, y1] = st.zoom;
    const draw = () => {
      const w = getW(), i = idx(W, w);
      f.readout.textContent = `w = ${general(w, 3)}: mean u ${fixed(at(i, 0), 3)} (tilted ` +
        `${fixed(at(i, 1), 3)}), sd ${fixed(at(i, 2), 3)} (${fixed(at(i, 3), 3)}); in ` +
        `class ${st.y}: ${fixed(at(i, 4), 3)}`;
      for (let r = 0; r < gy; r++) {  // the tilted density, darkest where it peaks
        for (let c = 0; c < gx; c++) {
          const v = H[(i * gy + r) * gx + c], o = ((gy - 1 - r) * gx + c) * 4;
          img.data.set([209, 73, 91, Math.round(0.8 * v)], o);
        }
      }
      ctx.putImageData(img, 0, 0);
      clear(f.svg);
      const nw = f.narrow();
      f.size(nw ? 360 : 680, nw ? 700 : 300);
      const ax = axes(f.svg, nw ? {x: 50, y: 24, w: 290, h: 290} : {x: 45, y: 24, w: 240, h: 240},
                      [x0, x1], [y0, y1], {title: `w = ${general(w, 3)}: the samples in view`,
                                           xlabel: "x₁", ylabel: "x₂", nx: 4, ny: 4});
      el("image", {href: canvas.toDataURL(), x: ax.box.x, y: ax.box.y, width: ax.box.w,
                   height: ax.box.h, preserveAspectRatio: "none"}, ax.under);
      let d = "";
      for (let k = 0; k < n; k++) {
        const base = (i * n + k) * 2;
        d += `M${ax.sx(X[base]).toFixed(1)},${ax.sy(X[base + 1]).toFixed(1)}h0`;
      }
      el("path", {d, stroke: C[0], "stroke-width": 2.5, "stroke-linecap": "round"}, ax.plot);
      const [mx, my] = st.mean, MX = ax.sx(mx), MY = ax.sy(my);
      el("path", {d: `M${MX - 6},${MY - 6}L${MX + 6},${MY + 6}M${MX - 6},${MY + 6}L${MX + 6},${MY - 6}`,
                  stroke: "currentColor", class: "bx-ink", "stroke-width": 2}, ax.plot);
      // the moments of u against w: the sampler (dots, 2 SE) and the tilted density (line)
      const panels = [[0, 1, "mean of u", 0], [2, 3, "sd of u", 1]];
      // w = 0 draws every class, far off these scales: the panels start at the next weight
      const inner = W.map((_, j) => j).filter(j => W[j] > 0), ws = inner.map(j => W[j]);
      for (const [k, kt, title, row] of panels) {
        const ys = W.map((_, j) => at(j, k)), yt = W.map((_, j) => at(j, kt));
        const se = W.map((_, j) => (k === 0 ? at(j, 2) : at(j, 2) / Math.SQRT2) / Math.sqrt(n));
        const lo = Math.min(...inner.map(j => Math.min(ys[j] - 2 * se[j], yt[j])));
        const hi = Math.max(...inner.map(j => Math.max(ys[j] + 2 * se[j], yt[j])));
        const pad = 0.08 * (hi - lo);
        const box = nw ? {x: 60, y: 370 + row * 165, w: 280, h: 120}
          : {x: 370, y: 24 + row * 140, w: 290, h: 100};
        const bx = axes(f.svg, box, [0, 1.04 * W[W.length - 1]], [lo - pad, hi + pad],
                        {title, ny: 3, xlabel: row === 1 ? "guidance weight w" : "",
                         noxticks: row === 0 && !nw});
        el("path", {d: pathOf(ws, inner.map(j => yt[j]), bx.sx, bx.sy), stroke: C[1],
                    fill: "none", "stroke-width": 2}, bx.plot);
        inner.forEach(j => {
          el("line", {x1: bx.sx(W[j]), x2: bx.sx(W[j]), y1: bx.sy(ys[j] - 2 * se[j]),
                      y2: bx.sy(ys[j] + 2 * se[j]), stroke: C[0], "stroke-width": 1.5},
             bx.plot);
          el("circle", {cx: bx.sx(W[j]), cy: bx.sy(ys[j]), r: j === i ? 5 : 3, fill: C[0],
                        stroke: j === i ? "currentColor" : "none"}, bx.plot);
        });
        if (row === 0) {
          legend(bx, [{label: "guided samples (± 2 SE)", color: C[0], marker: true},
                      {label: "tilted density", color: C[1]}], "lower right");
        }
      }
    };
    const getW = slider(f.controls, cw, draw);
    hint(f, `Computed in Python with the exact scores, ${grouped(st.T)} ` +
      `ancestral steps and the same noise at every w, on ${grouped(n)} samples, the count of ` +
      "the chapter's ci profile: at the chapter's own weights the numbers are that run's " +
      "(the stored run above draws more). The page looks them up. Left: the samples that " +
      `fall in the chapter's zoom, over the tilted density p(x) p(${st.y} | x)^w / Z_w ` +
      "(red, darkest at its peak), the cross at the " +
      "component's mean. u is a sample's coordinate along that mean. The right panels start " +
      "at the first weight above 0: at w = 0 the samples are every class's, off their scale.");
    register(f, draw);
  }

  // --- chapter 17: the rho grid and the solver on Gaussian data ---------------------------
  function grid(root, st) {
    const f = frame(root, 680, 290, "the grid's levels, scaled paths and the error");
    const levels = unpack(st.levels), err = unpack(st.err), paths = unpack(st.paths);
    const exact = unpack(st.exact), [cr, cn] = st.controls, P = st.drawn;
    const S = st.steps.length, J = st.solvers.length;
    let lo = Infinity, hi = -Infinity;  // one error axis for every grid: it never jumps
    for (const v of err) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const errRange = [10 ** Math.floor(Math.log10(lo)), 10 ** Math.ceil(Math.log10(hi))];
    const offsets = [];  // where each (rho, steps) grid starts in levels (and its paths)
    let o = 0;
    cr.values.forEach(() => st.steps.forEach(n => { offsets.push(o); o += n + 1; }));
    const draw = () => {
      const rho = getRho(), n = getN(), name = getSolver();
      const r = idx(cr.values, rho), k = st.steps.indexOf(n), j = st.solvers.indexOf(name);
      const base = offsets[r * S + k], ev = st.evaluations[k][j];
      const e = err[(r * S + k) * J + j];
      let below = 0;
      for (let i = 0; i < n; i++) below += levels[base + i] < 0.1;
      f.readout.textContent = `${name}, ρ = ${rho}, ${plural(n, "step")} ` +
        `(${plural(ev, "evaluation")}): RMS error at σ = 0 ${expo(e, 2)}; ${below} of ` +
        `${n} levels below σ = 0.1`;
      clear(f.svg);
      const nw = f.narrow(), c = C[j];
      f.size(nw ? 360 : 680, nw ? 690 : 290);
      const steps = Array.from({length: n + 1}, (_, i) => i);
      // the levels, the last one (0) off the log axis
      const la = axes(f.svg, nw ? {x: 60, y: 24, w: 280, h: 170} : {x: 50, y: 24, w: 170, h: 210},
                      [0, n], [1e-3, 200], {logy: true, xlabel: "step i", ylabel: "σ_i",
                                            title: `ρ = ${rho}: ${plural(n, "level")}`, nx: 4,
                                            integer: true});
      el("line", {x1: la.box.x, x2: la.box.x + la.box.w, y1: la.sy(0.1), y2: la.sy(0.1),
                  class: "bx-ink", stroke: "currentColor", "stroke-dasharray": "3,3",
                  opacity: 0.5}, la.plot);
      const lv = Array.from(levels.subarray(base, base + n));
      el("path", {d: pathOf(steps.slice(0, n), lv, la.sx, la.sy), stroke: c, fill: "none",
                  "stroke-width": 1.5}, la.plot);
      for (let i = 0; i < n; i++) {
        el("circle", {cx: la.sx(i), cy: la.sy(lv[i]), r: 2.5, fill: c}, la.plot);
      }
      // the first coordinate over its exact scale: flat for a perfect solver
      const pa = axes(f.svg, nw ? {x: 60, y: 250, w: 280, h: 170} : {x: 275, y: 24, w: 170, h: 210},
                      [0, n], [-3.5, 3.5], {xlabel: "step i", nx: 4, integer: true,
                                            ylabel: "(x₁ − μ₁), scaled",
                                            title: "paths, scaled"});
      const pbase = (base * J + j * (n + 1)) * P;  // paths: per grid, per solver, (n + 1, P)
      for (let p = 0; p < P; p++) {
        el("line", {x1: pa.box.x, x2: pa.box.x + pa.box.w, y1: pa.sy(exact[p]),
                    y2: pa.sy(exact[p]), class: "bx-ink", stroke: "currentColor",
                    "stroke-dasharray": "2,3", opacity: 0.45}, pa.plot);
        const ys = steps.map(i => paths[pbase + i * P + p]);
        el("path", {d: pathOf(steps, ys, pa.sx, pa.sy), stroke: c, fill: "none",
                    "stroke-width": 1.2, opacity: 0.85}, pa.plot);
      }
      // the error against evaluations: every solver on this grid
      const ea = axes(f.svg, nw ? {x: 60, y: 476, w: 280, h: 170} : {x: 500, y: 24, w: 170, h: 210},
                      [1, 100], errRange, {logx: true, logy: true,
                                               xlabel: "evaluations", ylabel: "RMS error",
                                               title: "error at σ = 0"});
      st.solvers.forEach((s, jj) => {
        const xs = st.steps.map((_, kk) => st.evaluations[kk][jj]);
        const ys = st.steps.map((_, kk) => err[(r * S + kk) * J + jj]);
        el("path", {d: pathOf(xs, ys, ea.sx, ea.sy), stroke: C[jj], fill: "none",
                    "stroke-width": jj === j ? 2.5 : 1.2}, ea.plot);
        el("circle", {cx: ea.sx(xs[k]), cy: ea.sy(ys[k]), r: jj === j ? 5 : 3, fill: C[jj]},
           ea.plot);
      });
    };
    const getRho = slider(f.controls, cr, draw), getN = slider(f.controls, cn, draw);
    const getSolver = choice(f.controls, "solver", "solver", st.solvers, "Heun", draw,
                             st.solvers.map((_, jj) => C[jj]));
    hint(f, `The error is over the chapter's ${grouped(st.points)} starting ` +
      "points at σ = 80 against the exact flow, in Python; the page looks it up. Middle: " +
      `the first coordinate's distance from its mean, x₁ − μ₁, of ${P} points, each divided ` +
      `by √(s² + σ²) with s = ${general(st.std0, 2)} its standard deviation: the exact flow ` +
      "keeps that constant, a dashed flat line. Left: the grid's levels, the " +
      "dashed line at σ = 0.1, and the last step to σ = 0 off the log axis.");
    register(f, draw);
  }

  const KINDS = {kl, elbo, pinned, latent, forward, solvers, fewstep: solvers, corruption,
                 grid, guidance, unmasking,
                 chain, completions, bound, straight, textunmasking};

  function start() {
    document.querySelectorAll(".book-explorer").forEach((root, i) => {
      const script = root.querySelector("script.book-explorer-state");
      if (!script || root.dataset.ready) return;
      const st = JSON.parse(script.textContent);
      root.dataset.uid = String(i);
      root.hidden = false;  // shown before drawing: the layout depends on its width
      KINDS[st.kind](root, st);
      root.dataset.ready = "1";
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
