"""companion.run.glue writes exactly what myst-nb's glue writes, so the book reads it alike."""

import json
import random
import re
from ast import literal_eval
from pathlib import Path

import pytest

from companion.run.glue import DIGITS_KEY, GLUE_PREFIX, glue, round_significant

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb"))

myst_glue = pytest.importorskip("myst_nb").glue


def outputs(fn, *args, **kwargs):
    """The display calls `fn` makes, as (data, metadata) pairs."""
    import IPython.display

    seen = []
    real = IPython.display.display
    IPython.display.display = lambda obj, **kw: seen.append((obj, kw))
    try:
        fn(*args, **kwargs)
    finally:
        IPython.display.display = real
    return seen


@pytest.mark.parametrize("value", [78.25, 6000, "below", [1, 2]])
@pytest.mark.parametrize("display", [True, False])
def test_same_output_as_myst_nb(monkeypatch, value, display):
    import myst_nb.ext.glue as mg

    ours, theirs = [], []
    monkeypatch.setattr("IPython.display.display",
                        lambda obj, **kw: ours.append((obj, kw)))
    glue("ch_x", value, display=display)
    monkeypatch.setattr(mg, "ipy_display", lambda obj, **kw: theirs.append((obj, kw)))
    myst_glue("ch_x", value, display=display)
    digits = ours[0][1]["metadata"].pop(DIGITS_KEY, None)
    assert (digits is not None) == isinstance(value, float)
    assert ours == theirs and len(ours) == 1
    data, kw = ours[0]
    assert kw["metadata"]["scrapbook"]["name"] == "ch_x"
    assert all(k.startswith("application/papermill.record/") for k in data) != display


def test_empty_name_is_refused():
    with pytest.raises(ValueError, match="name"):
        glue("", 1.0)


def stored_text(value, **kwargs):
    """The text/plain glue stores for `value`."""
    import IPython.display

    seen = []
    real = IPython.display.display
    IPython.display.display = lambda obj, **kw: seen.append(obj)
    try:
        glue("ch_x", value, display=False, **kwargs)
    finally:
        IPython.display.display = real
    return seen[0][GLUE_PREFIX + "text/plain"]


def test_a_float_is_stored_to_the_digits_the_prose_can_show():
    # the tenth digit of this float changes between AVX2 and AVX-512 (summation order)
    assert stored_text(5.545580054241051) == stored_text(5.545580053911725) == "5.546"
    assert stored_text(5.545580054241051, digits=6) == "5.54558"
    assert stored_text(1234, digits=2) == "1234" and stored_text("1.23456") == "'1.23456'"


def test_numpy_and_tensor_scalars_are_stored_as_plain_numbers():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    assert stored_text(np.float64(0.123446)) == "0.1234"
    assert stored_text(np.float32(2.5)) == "2.5"
    assert stored_text(torch.tensor(0.123446, dtype=torch.float64)) == "0.1234"


@pytest.mark.parametrize("digits", [0, -1, 2.5, True, "4"])
def test_bad_digits_are_refused(digits):
    with pytest.raises(ValueError, match="digits"):
        round_significant(1.0, digits)


def test_rounding_the_stored_value_again_agrees_with_rounding_the_value():
    """No double rounding: 1.3054 stored as 1.305 would print 1.30 at :.2f (1.31 is right)."""
    assert round_significant(1.3053776555617203) == 1.3054
    assert f"{round_significant(1.3053776555617203):.2f}" == "1.31"
    assert round_significant(0.125) == 0.125  # an exact tie stays what it is
    rng = random.Random(0)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-8, 8) for _ in range(3000)]
    # values just beside a tie of the third digit, where double rounding bites
    values += [(k + 0.5 + s) / 100 for k in range(100, 999, 7) for s in (1e-4, -1e-4, 3e-6)]
    for x in values:
        for digits in (3, 4, 5):
            stored = round_significant(x, digits)
            assert abs(stored - x) <= 0.5 * 10 ** (math_floor_log10(x) - digits + 1) * 1.0000001
            for shown in range(1, digits):
                assert f"{stored:.{shown - 1}e}" == f"{x:.{shown - 1}e}", (x, digits, shown)


def math_floor_log10(x):
    import math

    return math.floor(math.log10(abs(x)))


def significant_digits_shown(text: str) -> int | None:
    """Significant digits in a number as the prose shows it ('1,234.5' -> 5, '0.012' -> 2)."""
    m = re.fullmatch(r"[+-]?([0-9][0-9,]*(?:\.[0-9]*)?)(?:e[+-]?[0-9]+)?%?", text.strip())
    if not m:
        return None
    digits = m.group(1).replace(",", "").replace(".", "").lstrip("0")
    return max(len(digits), 1)


def glue_records(nb: dict) -> dict:
    """name -> (text/plain, digits stored) of a notebook's glue outputs."""
    out = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            scrap = o.get("metadata", {}).get("scrapbook")
            if scrap:
                text = next(v for k, v in o["data"].items() if k.endswith("text/plain"))
                out[scrap["name"]] = (text, o["metadata"].get(DIGITS_KEY))
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_sentence_shows_more_digits_than_glue_stored(path):
    """Every stored float went through companion.run.glue's rounding, and no {glue:text} role
    formats it with more significant digits than were kept (they would be made up)."""
    from myst_nb.core.variables import format_plain_text

    nb = json.loads(path.read_text())
    records = glue_records(nb)
    for name, (text, digits) in records.items():
        if isinstance(literal_eval_or_none(text), float):
            assert digits is not None, f"{path.name}: {name} = {text} was stored at full "\
                "precision; glue it with companion.glue (and re-run the cell)"
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for m in re.finditer(r"\{glue:text\}`([^`:]+)(?::([^`]*))?`", prose):
        name, spec = m.group(1), m.group(2) or ""
        if "::" in name or name not in records:
            continue
        text, digits = records[name]
        if digits is None:
            continue
        shown = significant_digits_shown(format_plain_text(text, spec))
        assert shown is None or shown <= digits, (
            f"{path.name}: {{glue:text}}`{name}:{spec}` shows {shown} significant digits "
            f"but glue kept {digits}: pass digits={shown} to its glue call")


def literal_eval_or_none(text):
    try:
        return literal_eval(text)
    except (ValueError, SyntaxError):
        return None
