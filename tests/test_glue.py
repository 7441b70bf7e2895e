"""companion.glue writes exactly what myst-nb's glue writes, so the book reads it alike."""

import pytest

from companion.glue import glue

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
    assert ours == theirs and len(ours) == 1
    data, kw = ours[0]
    assert kw["metadata"]["scrapbook"]["name"] == "ch_x"
    assert all(k.startswith("application/papermill.record/") for k in data) != display


def test_empty_name_is_refused():
    with pytest.raises(ValueError, match="name"):
        glue("", 1.0)
