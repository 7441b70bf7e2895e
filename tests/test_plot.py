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
