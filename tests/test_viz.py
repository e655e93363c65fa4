"""Plotting helpers: figures have the panels, titles and bit boxes asked for."""

import numpy as np
import pytest

from minquant import formats, viz

plt = pytest.importorskip("matplotlib.pyplot")


def test_show_images_grid_and_titles():
    images = [np.full((6, 8, 3), v, np.uint8) for v in (0, 100, 200)] + [np.zeros((6, 8))]
    fig = viz.show_images(images, ["a", "b", "c", "gray"], ncols=3)
    try:
        assert len(fig.axes) == 6  # 2 rows x 3 columns, the last two left empty
        assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "b", "c", "gray"]
        assert fig.axes[3].images[0].get_cmap().name == "gray"
        assert not fig.axes[4].images
    finally:
        plt.close(fig)


def test_show_images_rejects_mismatched_titles():
    with pytest.raises(ValueError, match=r"need one title per image.*got 1 image and 2 titles"):
        viz.show_images([np.zeros((2, 2))], ["a", "b"])
    with pytest.raises(ValueError, match="got 0 images and 0 titles"):
        viz.show_images([], [])


def test_use_style_sets_readable_defaults():
    with plt.rc_context():
        viz.use_style()
        # NOTE: text of at least 11 px: points * dpi / 72
        assert plt.rcParams["legend.fontsize"] * plt.rcParams["figure.dpi"] / 72 >= 11
        assert plt.rcParams["axes.titlesize"] * plt.rcParams["figure.dpi"] / 72 >= 13


def test_plot_bit_layouts_draws_one_box_per_bit():
    sign, exponent, mantissa = formats.bit_fields(-1.5, "fp8_e4m3")
    layouts = {
        "fp8_e4m3": [("sign", sign), ("exponent", exponent), ("mantissa", mantissa)],
        "int8": [("integer", formats.int_bits(-3))],
    }
    fig = viz.plot_bit_layouts(layouts, {"int8": "= -3"})
    try:
        ax = fig.axes[0]
        assert len(ax.patches) == 16
        texts = [t.get_text() for t in ax.texts]
        assert "".join(t for t in texts if t in "01") == "1011110011111101"
        assert "= -3" in texts and "fp8_e4m3" in texts
        colors = [p.get_facecolor() for p in ax.patches]
        assert colors[0] != colors[1]  # sign and exponent differ
    finally:
        plt.close(fig)


def test_plot_bit_layouts_rejects_bad_fields():
    with pytest.raises(ValueError, match="field must be one of"):
        viz.plot_bit_layouts({"x": [("fraction", "01")]})
    with pytest.raises(ValueError, match="must be a string of 0s and 1s"):
        viz.plot_bit_layouts({"x": [("sign", "2")]})
