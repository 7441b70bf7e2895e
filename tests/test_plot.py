import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from companion import plot  # noqa: E402


def test_image_grid_places_each_image():
    x = torch.zeros(5, 1, 4, 4)
    x[3] = 1.0  # the fourth image is white
    ax = plot.image_grid(x, nrow=3, pad=1)
    canvas = ax.get_images()[0].get_array()
    assert canvas.shape == (2 * 5 + 1, 3 * 5 + 1)
    # image 3 sits in row 1, column 0
    assert np.all(canvas[6:10, 1:5] == 1.0) and np.all(canvas[1:5, 1:5] == 0.0)
    plt.close("all")


def test_image_grid_rejects_flat_images():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        plot.image_grid(torch.zeros(4, 784))


def test_smooth_is_a_moving_average():
    assert plot.smooth([1, 3, 5, 7], 2).tolist() == [1, 2, 4, 6]
    assert plot.smooth([2, 4], 1).tolist() == [2, 4]


def test_loss_curves_plots_each_key_and_names_missing_ones():
    history = {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "kl": [1.0, 1.0, 1.0]}
    ax = plot.loss_curves(history, keys=("loss", "kl"), window=1)
    assert len(ax.get_lines()) == 2
    assert ax.get_lines()[0].get_ydata().tolist() == [3.0, 2.0, 1.0]
    with pytest.raises(KeyError, match="has no 'recon'"):
        plot.loss_curves(history, keys=("recon",))
    plt.close("all")


def test_style_uses_png():
    plot.use_style()
    assert matplotlib.rcParams["image.cmap"] == "gray"


def _legend_figure(width_in, legend_size):
    """Three panels of curves with a legend, like chapter 3's EM figure."""
    fig, axes = plt.subplots(1, 3, figsize=(width_in, 3.6), layout="constrained")
    for ax in axes:
        ax.plot([0, 1, 2], [1, 0, 2], label="log p(x)")
        ax.plot([0, 1, 2], [0, 1, 1], label="ELBO")
        ax.set(xlabel="iteration", ylabel="nats")
        ax.legend(fontsize=legend_size)
    return fig


@pytest.mark.slow
def test_check_refuses_text_under_9_px_at_the_column_width():
    plot.use_style()
    fig = _legend_figure(15, 8)  # the book's old 15-inch, 8-point legends
    px, text = plot.smallest_text(fig)
    # 8 pt is 11.1 px at 100 dpi; a 15-inch figure is shown at about 688/1500
    assert 4 < px < 6 and text in ("log p(x)", "ELBO")
    with pytest.raises(ValueError, match=r"'(log p\(x\)|ELBO)'.* px high"):
        plot.check(fig)
    plt.close("all")


@pytest.mark.slow
def test_check_passes_the_convention_figures():
    plot.use_style()
    fig, axes = plot.subplots(1, 3)
    for ax in axes:
        ax.plot([0, 1, 2], [1, 0, 2], label="log p(x)")
        ax.set(xlabel="iteration", ylabel="nats")
        ax.legend()
    assert plot.displayed_scale(fig) > 0.95
    assert plot.smallest_text(fig)[0] >= plot.MIN_TEXT_PX
    plot.check(fig)
    # a 4-panel row of image grids with titles, as in chapter 1
    fig, axes = plot.subplots(1, 4, height=2.2)
    for ax in axes:
        plot.image_grid(torch.rand(16, 1, 8, 8), nrow=4, ax=ax, title="noisy")
    plot.check(fig)
    plt.close("all")


def test_check_refuses_numbered_ticks_without_a_label():
    plot.use_style()
    fig, ax = plot.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("step")
    with pytest.raises(ValueError, match="y of axes 0"):
        plot.check(fig)
    ax.set_ylabel("loss")
    plot.check(fig)
    plt.close("all")


def test_loss_curves_label_the_y_axis():
    history = {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0]}
    assert plot.loss_curves(history).get_ylabel() == "loss"
    plt.close("all")


def test_subplots_refuses_a_width_beyond_the_column():
    with pytest.raises(ValueError, match=r"fraction of the column"):
        plot.subplots(width=1.5)


def test_named_ticks_need_no_axis_label():
    """A bar chart's names are their own labels; only numbered ticks need one."""
    plot.use_style()
    fig, ax = plot.subplots()
    ax.barh(["ELBO", "log p(x)"], [1.0, 2.0])
    ax.set_xlabel("nats")
    plot.check(fig)
    ax.set_xlabel("")
    with pytest.raises(ValueError, match="x of axes 0"):
        plot.check(fig)
    plt.close("all")


def _two_frame_animation():
    from matplotlib.animation import FuncAnimation

    fig, ax = plot.subplots(height=1.0)
    (line,) = ax.plot([0, 1], [0, 0])
    anim = FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=2)
    return fig, anim


def test_animation_html_sets_the_frames_alt_text_and_shrinks_on_a_phone():
    from html.parser import HTMLParser

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs))

    fig, anim = _two_frame_animation()
    alt = 'A line that tilts up, frame by frame ("t" rises) & back'
    page = plot.animation_html(anim, alt)
    plt.close(fig)
    parsed = Images()
    parsed.feed(page)
    assert len(parsed.images) == 1
    assert parsed.images[0]["alt"] == alt  # quotes and & survive, escaped
    assert parsed.images[0]["id"].startswith("_anim_img")
    assert ".animation img, .anim-slider {max-width: 100%;}" in page
    assert "anim_step_forward" in page  # still matplotlib's working slider


@pytest.mark.filterwarnings("ignore:Animation was deleted without rendering")
def test_animation_html_refuses_an_alt_text_that_says_nothing():
    fig, anim = _two_frame_animation()
    with pytest.raises(ValueError, match="at least three words"):
        plot.animation_html(anim, "animation.png")
    plt.close(fig)


def test_label_points_keeps_crowded_labels_apart():
    from companion.plot import label_points, subplots

    fig, ax = subplots(height=3.0)
    points = [(0.4 + 0.03 * i, 0.5) for i in range(5)]  # labels wider than the gaps
    ax.plot(*zip(*points, strict=True), "o")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    names = [f"set number {i}" for i in range(5)]
    renderer = plot._renderer(fig)
    naive = [ax.annotate(n, p, xytext=(4, 2), textcoords="offset points", fontsize=9)
             for n, p in zip(names, points, strict=True)]
    boxes = [t.get_window_extent(renderer) for t in naive]
    assert any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for t in naive:
        t.remove()
    texts = label_points(ax, points, names)
    fig.canvas.draw()  # the words' boxes, without the lines to labels a row out
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in texts]
    assert [t.get_text() for t in texts] == names
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    with pytest.raises(ValueError, match="one label per point"):
        label_points(ax, points, ["one"])
    plt.close(fig)


def test_log_labels_writes_plain_numbers_at_the_chosen_mantissas():
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.plot([0, 1], [30, 2000])
    plot.log_labels(ax)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
             if t.get_text()]
    assert {"100", "1000", "200", "300", "500"} <= set(shown)
    assert not {"40", "400", "4000"} & set(shown)  # 4 is not asked for
    assert not any("10^" in t or "times" in t for t in shown)
    plt.close(fig)


def test_log_labels_refuses_a_linear_axis():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="not 'log'"):
        plot.log_labels(ax)
    plt.close(fig)
