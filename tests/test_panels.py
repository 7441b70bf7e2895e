"""companion.panels (a figure's columns written into its PNG) and book/_ext/panels.py (the
page that stacks them on a phone)."""

import base64
import io
import math
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from companion import panels, plot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))


def _row(ncols, **kw):
    plot.use_style()
    fig, axes = plot.subplots(1, ncols, **kw)
    for ax in list(getattr(axes, "flat", [axes])):
        ax.plot([0, 1, 2], [1, 0, 2])
        ax.set(xlabel="step", ylabel="loss", title="a panel")
    return fig


def test_a_row_of_panels_is_cut_into_its_columns():
    layout = panels.layout(_row(3))
    width, height = layout.size
    assert len(layout.boxes) == 3
    assert layout.boxes[0][0] == 0 and layout.boxes[-1][2] == width
    assert all(a[2] == b[0] for a, b in zip(layout.boxes, layout.boxes[1:], strict=False))
    assert all(y0 == 0 and y1 == height for _, y0, _, y1 in layout.boxes)
    assert all(abs((x1 - x0) - width / 3) < 0.1 * width for x0, _, x1, _ in layout.boxes)
    # 9-pt tick labels, 12.5 px in the PNG; stacked on a phone none is shrunk
    assert layout.text_px == (12.5, 12.5, 12.5)
    assert min(layout.shown_text_px(panels.PHONE_PX)) == 12.5
    assert max(layout.shown_text_px(panels.PHONE_PX, stacked=False)) < 7
    plt.close("all")


def test_a_grid_is_cut_into_its_panels_in_reading_order():
    """Rows stay together on a phone: panel (row 0, col 0), (0, 1), then row 1."""
    plot.use_style()
    fig, axes = plot.subplots(2, 2)
    for i, ax in enumerate(axes.flat):
        ax.plot([0, 1], [0, i])
        ax.set(xlabel="x", ylabel="y", title=f"panel {i}")
    layout = panels.layout(fig)
    width, height = layout.size
    assert len(layout.boxes) == 4
    (a, b, c, d) = layout.boxes
    assert a[0] == c[0] == 0 and b[2] == d[2] == width  # columns
    assert a[1] == b[1] == 0 and c[3] == d[3] == height  # rows
    assert a[2] == b[0] and a[3] == c[1]  # cut, nothing left out
    # a panel spanning both columns leaves one column: the figure stays whole
    fig = plt.figure(layout="constrained")
    spec = fig.add_gridspec(2, 2)
    fig.add_subplot(spec[0, :]).plot([0, 1])
    fig.add_subplot(spec[1, 0]).plot([0, 1])
    fig.add_subplot(spec[1, 1]).plot([0, 1])
    assert len(panels.layout(fig).boxes) == 1
    # a slot of the grid switched off and left empty is no panel (chapter 8's samplers: a
    # blank screen between two rows on a phone)
    fig, axes = plot.subplots(2, 2)
    for i, ax in enumerate(axes.flat[1:]):
        ax.plot([0, 1], [0, i])
        ax.set(xlabel="x", ylabel="y", title=f"panel {i}")
    axes[0, 0].axis("off")
    boxes = panels.layout(fig).boxes
    assert len(boxes) == 3 and boxes[0][0] > 0  # row 0's right panel, then row 1
    axes[0, 0].imshow([[0, 1], [1, 0]])  # an image grid's axes are off but show something
    assert len(panels.layout(fig).boxes) == 4
    plt.close("all")


def test_a_colorbar_stays_with_its_panel_and_figure_text_keeps_the_figure_whole():
    plot.use_style()
    fig, (a, b) = plot.subplots(1, 2)
    fig.colorbar(a.imshow([[0, 1], [2, 3]]), ax=a)
    b.plot([0, 1])
    b.set(xlabel="x", ylabel="y")
    assert len(panels.layout(fig).boxes) == 2
    fig.suptitle("a title over both panels")
    assert panels.layout(fig).boxes == ((0, 0, *panels.layout(fig).size),)
    plt.close("all")


def test_the_png_carries_its_layout(tmp_path):
    fig = _row(2)
    data = base64.b64decode(panels.png(fig))
    path = tmp_path / "f.png"
    path.write_bytes(data)
    layout = panels.read(path)
    assert layout == panels.layout(fig)
    with Image.open(io.BytesIO(data)) as im:
        assert abs(im.size[0] - layout.size[0]) <= 1 and abs(im.size[1] - layout.size[1]) <= 1
    plt.figure().savefig(tmp_path / "plain.png")
    assert panels.read(tmp_path / "plain.png") is None
    assert panels.png(plt.figure()) is None  # an empty figure: nothing, as IPython does
    plt.close("all")


def test_layout_round_trips_text_free_columns():
    layout = panels.Layout((10, 5), ((0, 0, 4, 5), (4, 0, 10, 5)), (12.5, math.inf))
    assert panels.Layout.from_json(layout.to_json()) == layout


def test_check_refuses_one_panel_too_wide_for_a_phone():
    fig = _row(1, width=1.0)  # the whole 688-px column, 9-pt labels: 6.2 px on a phone
    with pytest.raises(ValueError, match=r"phone's 342-px column the figure .* px high"):
        plot.check(fig)
    plot.check(_row(1))  # subplots' default for one column of panels
    plot.check(_row(4))
    plt.close("all")


def _app(tmp_path, files):
    builder = types.SimpleNamespace(images={f"out/{n}": n for n in files})
    return types.SimpleNamespace(builder=builder, srcdir=str(tmp_path))


def test_the_page_stacks_the_columns_of_a_figure_that_has_them(tmp_path):
    import panels as ext  # book/_ext/panels.py

    (tmp_path / "out").mkdir()
    fig = _row(3)
    (tmp_path / "out" / "three.png").write_bytes(base64.b64decode(panels.png(fig)))
    (tmp_path / "out" / "one.png").write_bytes(base64.b64decode(panels.png(_row(1))))
    fig.savefig(tmp_path / "out" / "old.png")
    body = ('<figure><img alt="Three curves" src="../_images/three.png" /></figure>'
            '<img alt="One" src="../_images/one.png" /><img alt="Old" src="../_images/old.png" />')
    context = {"body": body}
    ext.stack(_app(tmp_path, ["three.png", "one.png", "old.png"]), "p", "page.html",
              context, None)
    out = context["body"]
    assert 'class="book-whole"' in out and out.count('class="book-panel"') == 3
    assert 'role="img" aria-label="Three curves"' in out
    assert out.count('src="../_images/three.png"') == 4  # the whole, then three columns
    assert '<img data-text-px="12.5" alt="One"' in out  # one column: measured, not cut
    assert '<img alt="Old" src="../_images/old.png" />' in out  # no layout: as it was
    first = panels.layout(fig).boxes[0]
    width = panels.layout(fig).size[0]
    assert (f"width: {100 * width / (first[2] - first[0]):.4f}%; margin-left: -0.0000%; "
            "margin-top: -0.0000%") in out
    plt.close("all")


def test_inside_ipython_the_style_makes_every_figures_png_carry_its_layout():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        plot.use_style()
        fig = _row(2)
        data, _ = shell.display_formatter.format(fig, include={"image/png"})
        with Image.open(io.BytesIO(base64.b64decode(data["image/png"]))) as im:
            assert panels.Layout.from_json(im.text[panels.KEY]) == panels.layout(fig)
    finally:
        InteractiveShell.clear_instance()
        plt.close("all")


def test_a_page_stored_before_keeps_its_figures_with_phone_false():
    """use_style(phone=False), for chapters not yet drawn for a phone: one column of
    panels as wide as the column, and no phone check (their stored outputs stay)."""
    try:
        plot.use_style(phone=False)
        fig, _ = plot.subplots()
        assert fig.get_size_inches()[0] == pytest.approx(plot.COLUMN_INCHES)
        fig.axes[0].plot([0, 1])
        fig.axes[0].set(xlabel="x", ylabel="y")
        plot.check(fig)  # 6 px on a phone, allowed here
        plot.use_style()
        with pytest.raises(ValueError, match="phone"):
            plot.check(fig)
    finally:
        plot.use_style()
        plt.close("all")
