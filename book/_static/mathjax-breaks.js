// Where MathJax 4 may break a displayed equation that is wider than the column (on a phone;
// output.displayOverflow: linebreak in _config.yml): only where TeX breaks a formula in a
// paragraph, at a relation (=, <=, ~) or a binary operator (+, -) that is outside every
// bracket, and at a space of 1em or more (\quad, \qquad: between the parts of a list of
// formulas). Left to itself MathJax 4.1 also breaks at thin spaces, between a function and its
// argument and inside brackets, where the broken formula reads as another one: "+ w" at a
// line's end and "\nabla log p(y | x)" below it for w \nabla log p(y | x). A display with no
// such place that fits stays whole and scrolls in its box, with the shadows of
// book/_static/code-cells.css. Explicit breaks (\\, \allowbreak, \nobreak) are kept.
// Loaded on every page (html_js_files in _config.yml) after Sphinx's window.MathJax = {...}
// and before MathJax itself (deferred), so it only adds to that configuration.
(function () {
  const config = window.MathJax;
  if (!config || config.version) return;  // no equations on this page, or MathJax already ran
  const ORD = 0, BIN = 2, REL = 3, CLOSE = 5;  // MathJax's TEXCLASS values (of an mo)
  const OPENERS = '([{\u27E8\u2308\u230A', CLOSERS = ')]}\u27E9\u2309\u230B';
  const nobreak = node => node.attributes.set('linebreak', 'nobreak');
  const explicit = node => node.attributes.getExplicit('linebreak') !== undefined;

  // +1 for an opening bracket, -1 for a closing one, 0 otherwise: an mo, alone in its group
  // (\big( is an mrow holding the mo) or the base of its scripts (the ")" of "s(x)^\top")
  function bracket(node) {
    while (node) {
      if (node.isKind('mo')) {
        const text = node.getText();
        return OPENERS.includes(text) ? 1 : CLOSERS.includes(text) ? -1 : 0;
      }
      if (node.isKind('msub') || node.isKind('msup') || node.isKind('msubsup')) {
        node = node.childNodes[0];
      } else if (!node.isToken && node.childNodes && node.childNodes.length === 1) {
        node = node.childNodes[0];
      } else {
        return 0;
      }
    }
    return 0;
  }

  // Mark every mo and mspace under `node` that is no place to break. `line`: the children of
  // `node` form a line MathJax breaks (the formula itself, or a cell of aligned or split).
  function mark(node, line, state = {depth: 0, afterOperand: false}) {
    for (const child of node.childNodes || []) {
      if (!child || child.isKind('text')) continue;
      if (child.isInferred || child.isKind('mstyle')) {  // transparent: the same line
        mark(child, line, state);
        continue;
      }
      const b = bracket(child);
      if (b < 0) state.depth = Math.max(0, state.depth - 1);
      const outside = line && state.depth === 0;
      if (child.isKind('mo')) {
        const cls = child.texClass;
        // a binary operator only after an operand (a minus after "=" or "(" is a sign)
        const binary = cls === BIN && state.afterOperand;
        if (!explicit(child) && !(outside && (cls === REL || binary))) nobreak(child);
      } else if (child.isKind('mspace')) {
        const em = /^([\d.]+)em$/.exec(child.attributes.get('width') || '');
        if (!explicit(child)) {
          if (outside && em && parseFloat(em[1]) >= 1) {
            child.attributes.set('linebreak', 'goodbreak');
          } else {
            nobreak(child);
          }
        }
      } else {
        mark(child, child.isKind('mtd'));
      }
      if (b > 0) state.depth++;
      if (child.isKind('mo')) {
        state.afterOperand = child.texClass === CLOSE || child.texClass === ORD;
      } else if (!child.isKind('mspace')) {
        state.afterOperand = true;  // (its TeX class is not set yet when the filter runs)
      }
    }
  }

  // The operators the accessibility extension adds after the TeX is read (invisible times,
  // function application): no place to break either.
  function markAdded(node) {
    if (!node) return;
    if (node.isKind && node.isKind('mo') && node.attributes.get('data-semantic-added') &&
        !explicit(node)) nobreak(node);
    for (const child of node.childNodes || []) markAdded(child);
  }

  const ready = config.startup && config.startup.ready;
  config.startup = Object.assign({}, config.startup, {
    ready() {
      if (ready) ready(); else MathJax.startup.defaultReady();
      const tex = MathJax.startup.document.inputJax.find(jax => jax.name === 'TeX');
      if (tex) tex.postFilters.add(({data}) => mark(data.root, true));
    },
  });
  config.options = Object.assign({}, config.options);
  config.options.renderActions = Object.assign({}, config.options.renderActions, {
    // after the enrichment (MathJax's state ENRICHED is 30), before the layout
    bookNoBreakAdded: [35, doc => { for (const math of doc.math) markAdded(math.root); },
      math => markAdded(math.root)],
  });
})();
