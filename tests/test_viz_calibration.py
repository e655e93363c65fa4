"""plot_histogram_ranges: one panel per range, clipped bars in red, bad input refused."""

import matplotlib.colors
import numpy as np
import pytest

from minquant import viz

plt = pytest.importorskip("matplotlib.pyplot")


def _bars(ax):
    return ax.patches[1:]  # patches[0] is the shaded range


def test_one_panel_per_range_with_its_title_and_lines():
    x = np.random.default_rng(0).normal(size=1000)
    ranges = {"a": (-3.0, 3.0), "b": (-1.0, 1.0), "c": (0.0, 0.5), "d": (-2.0, 0.0)}
    fig = viz.plot_histogram_ranges(x, ranges, ncols=3, bins=20)
    try:
        assert len(fig.axes) == 6  # 2 rows x 3 columns, two left empty
        assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "b", "c", "d"]
        assert not fig.axes[4].axison and not fig.axes[5].axison
        for ax, (lo, hi) in zip(fig.axes, ranges.values(), strict=False):
            assert len(_bars(ax)) == 20
            xs = sorted(line.get_xdata()[0] for line in ax.lines)
            assert xs == [lo, hi]
    finally:
        plt.close(fig)


def test_bars_outside_the_range_are_red_and_keep_the_counts():
    x = np.arange(10.0) + 0.5  # one value in each unit bin of [0.5, 9.5]
    fig = viz.plot_histogram_ranges(x, {"clip": (2.0, 6.0)}, bins=9, log=False)
    try:
        bars = _bars(fig.axes[0])
        red = matplotlib.colors.to_rgba(viz.RANGE_COLORS["clipped"])
        clipped = [bar.get_facecolor() == red for bar in bars]
        centres = [bar.get_x() + bar.get_width() / 2 for bar in bars]
        assert clipped == [not 2.0 <= c <= 6.0 for c in centres]
        assert sum(bar.get_height() for bar in bars) == 10
    finally:
        plt.close(fig)


@pytest.mark.parametrize(
    ("x", "ranges", "match"),
    [
        (np.zeros(0), {"a": (0.0, 1.0)}, "non-empty and finite"),
        (np.array([0.0, np.nan]), {"a": (0.0, 1.0)}, "non-empty and finite"),
        (np.ones(3), {}, "at least one"),
        (np.ones(3), {"bad": (2.0, 1.0)}, "'bad' must have lo <= hi"),
    ],
)
def test_bad_input_is_refused(x, ranges, match):
    with pytest.raises(ValueError, match=match):
        viz.plot_histogram_ranges(x, ranges)
