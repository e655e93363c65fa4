"""Plotting helpers shared by the notebooks.

matplotlib is imported inside each function, so ``import minquant`` never pays for it.
Every helper returns the :class:`matplotlib.figure.Figure` it drew; in a notebook the
inline backend displays it at the end of the cell.
"""

from collections.abc import Sequence

import numpy as np

#: Readable defaults for every figure (notebooks call :func:`use_style` once; the demo
#: draws inside ``matplotlib.rc_context(STYLE)``). At 72 dpi, matplotlib's default 10 pt
#: text is 10 px high and the smaller titles and legends 7-8 px: too small to read.
STYLE = {
    "figure.dpi": 80,  # inline images: readable, and notebooks stay under 1 MB each
    "savefig.dpi": 120,  # files written with savefig (the demo plot)
    "font.size": 10.5,  # tick labels and text, in points (about 12 px at 80 dpi)
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
}


def use_style() -> None:
    """Apply :data:`STYLE` to matplotlib's global settings (call once, at the top of a notebook).

    >>> use_style()
    >>> import matplotlib
    >>> matplotlib.rcParams["figure.dpi"] == STYLE["figure.dpi"]
    True
    """
    import matplotlib

    matplotlib.rcParams.update(STYLE)


#: Colours of the bit fields in :func:`plot_bit_layouts`.
FIELD_COLORS = {
    "sign": "#e07a5f",
    "exponent": "#81b29a",
    "mantissa": "#6d9dc5",
    "integer": "#f2cc8f",
}


def _count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1: "1 image", "2 images", "0 images"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def show_images(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int | None = None,
    width: float = 2.4,
):
    """Show images side by side (one row unless ``ncols`` is given), axes hidden.

    >>> fig = show_images([np.zeros((4, 4, 3), np.uint8)] * 2, ["a", "b"])
    >>> [ax.get_title() for ax in fig.axes]
    ['a', 'b']
    >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    import matplotlib.pyplot as plt

    if len(images) != len(titles) or len(images) == 0:
        raise ValueError(
            "need one title per image and at least one image, got "
            f"{_count(len(images), 'image')} and {_count(len(titles), 'title')}"
        )
    ncols = ncols or len(images)
    nrows = -(-len(images) // ncols)
    height, img_width = np.asarray(images[0]).shape[:2]
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, width * nrows * height / img_width + 0.4 * nrows),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel()[: len(images)], images, titles, strict=True):
        ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_bit_layouts(
    layouts: dict[str, Sequence[tuple[str, str]]],
    value_labels: dict[str, str] | None = None,
):
    """Draw bit patterns as rows of boxes, one row per format, coloured by field.

    ``layouts`` maps a row label to its fields, most significant first, as
    ``(field, bits)`` pairs with ``field`` one of :data:`FIELD_COLORS`, e.g.
    ``{"float16": [("sign", "0"), ("exponent", "01111"), ("mantissa", "0000000000")]}``.
    ``value_labels`` optionally maps a row label to text printed after the row.

    >>> fig = plot_bit_layouts({"int8": [("integer", "00000101")]}, {"int8": "= 5"})
    >>> "".join(t.get_text() for t in fig.axes[0].texts)
    'int800000101= 5'
    >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    value_labels = value_labels or {}
    for label, fields in layouts.items():
        for field, bits in fields:
            if field not in FIELD_COLORS:
                raise ValueError(f"field must be one of {sorted(FIELD_COLORS)}, got {field!r}")
            if set(bits) - {"0", "1"}:
                raise ValueError(f"bits of {label!r} must be a string of 0s and 1s, got {bits!r}")
    widest = max(sum(len(bits) for _, bits in fields) for fields in layouts.values())
    box = 1.0 if widest <= 16 else 16.0 / widest * 1.6  # narrow boxes for float32
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * len(layouts) + 0.6))
    for row, (label, fields) in enumerate(layouts.items()):
        y = len(layouts) - 1 - row
        ax.text(-0.5, y + 0.4, label, ha="right", va="center", fontsize=9)
        x = 0.0
        for field, bits in fields:
            for bit in bits:
                ax.add_patch(Rectangle((x, y), box, 0.8, fc=FIELD_COLORS[field], ec="white"))
                ax.text(x + box / 2, y + 0.4, bit, ha="center", va="center", fontsize=7)
                x += box
        if label in value_labels:
            ax.text(x + 0.5, y + 0.4, value_labels[label], ha="left", va="center", fontsize=9)
    ax.set_xlim(-6.5, 16 * 1.6 + 9)
    ax.set_ylim(-0.2, len(layouts))
    ax.axis("off")
    used = {field for fields in layouts.values() for field, _ in fields}
    handles = [Patch(color=FIELD_COLORS[f], label=f) for f in FIELD_COLORS if f in used]
    ax.legend(handles=handles, loc="upper right", fontsize=8, ncol=len(handles), frameon=False)
    fig.tight_layout()
    return fig


#: Colours of :func:`plot_histogram_ranges`: values kept, values clipped, the range itself.
RANGE_COLORS = {"kept": "#8d99ae", "clipped": "#e63946", "range": "#1d3557"}


def plot_histogram_ranges(
    x: np.ndarray,
    ranges: dict[str, tuple[float, float]],
    ncols: int = 3,
    bins: int = 100,
    log: bool = True,
):
    r"""One histogram of ``x`` per candidate range $[\alpha, \beta]$, the range drawn on it.

    Each entry of ``ranges`` (title -> ``(lo, hi)``) gets a panel with the same bins and
    axes: the range is shaded and bounded by vertical lines, and the bars whose centre lies
    outside it (the values that quantization will *clip*) are drawn in red. ``log`` uses a
    logarithmic count axis, which shows the rare tail values that set a min/max range.

    >>> x = np.linspace(0.0, 10.0, 1001)
    >>> fig = plot_histogram_ranges(x, {"min/max": (0.0, 10.0), "clipped": (0.0, 5.0)}, bins=10)
    >>> [ax.get_title() for ax in fig.axes]
    ['min/max', 'clipped']
    >>> [sum(p.get_facecolor()[0] > 0.8 for p in ax.patches[1:]) for ax in fig.axes]  # red bars
    [0, 5]
    >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    import matplotlib.pyplot as plt

    x = np.asarray(x, dtype=np.float64).ravel()  # (N,)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be non-empty and finite, got {x.size} values")
    if not ranges:
        raise ValueError("ranges must hold at least one (lo, hi) pair, got none")
    for title, (lo, hi) in ranges.items():
        if not lo <= hi:
            raise ValueError(f"range {title!r} must have lo <= hi, got ({lo}, {hi})")
    counts, edges = np.histogram(x, bins=bins)  # (bins,), (bins + 1,)
    centres = (edges[:-1] + edges[1:]) / 2  # (bins,)
    ncols = min(ncols, len(ranges))
    nrows = -(-len(ranges) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.3 * ncols, 2.3 * nrows), squeeze=False, sharex=True, sharey=True
    )
    for ax in axes.ravel()[len(ranges) :]:
        ax.axis("off")
    for ax, (title, (lo, hi)) in zip(axes.ravel(), ranges.items(), strict=False):
        # NOTE: the span is drawn first, so ax.patches[0] is the range and the bars follow.
        ax.axvspan(lo, hi, color=RANGE_COLORS["range"], alpha=0.12, lw=0)
        inside = (centres >= lo) & (centres <= hi)  # (bins,)
        colors = np.where(inside, RANGE_COLORS["kept"], RANGE_COLORS["clipped"])
        ax.bar(centres, counts, width=np.diff(edges), color=colors, log=log)
        for edge in (lo, hi):
            ax.axvline(edge, color=RANGE_COLORS["range"], lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig
