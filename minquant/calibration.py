r"""Range calibration: choose the clipping range $[\alpha, \beta]$ to quantize with.

Min/max calibration keeps every outlier and so wastes most integer codes on a few rare
values. The functions here pick a narrower range from a histogram of the observed data,
trading *clipping error* (values outside the range) against *rounding error* (the step
$s = (\beta - \alpha) / (q_{max} - q_{min})$ inside it). They are the algorithms behind
the histogram-based observers of :mod:`minquant.observers`.

References:

* PyTorch ``torch.ao.quantization.HistogramObserver._non_linear_param_search``, itself
  from Caffe2's ``NormMinimization::NonlinearQuantizationParamsSearch`` (L2 search).
* S. Migacz, "8-bit Inference with TensorRT", GPU Technology Conference 2017 (KL / entropy
  calibration).
* H. Wu et al., "Integer Quantization for Deep Learning Inference: Principles and Empirical
  Evaluation", 2020 (arXiv:2004.09602) (percentile, MSE and entropy calibration compared).
* M. Nagel et al., "A White Paper on Neural Network Quantization", 2021
  (arXiv:2106.08295), section 3.4 (MSE-based range setting).
"""

import numpy as np

from minquant.quant import calc_qparams, fake_quantize


def rebin_histogram(
    hist: np.ndarray,
    lo: float,
    hi: float,
    new_lo: float,
    new_hi: float,
    upsample_rate: int = 16,
) -> np.ndarray:
    r"""Move a histogram over ``[lo, hi]`` onto the same number of bins over a wider range.

    As PyTorch's ``HistogramObserver``: each bin is split into ``upsample_rate`` equal parts
    (its count spread evenly), and every part lands, whole, in the new bin holding its
    midpoint.

    >>> rebin_histogram(np.array([4.0, 0.0]), 0.0, 2.0, 0.0, 4.0).tolist()
    [4.0, 0.0]
    >>> rebin_histogram(np.array([0.0, 4.0]), 0.0, 2.0, -2.0, 2.0).tolist()
    [0.0, 4.0]
    """
    bins = hist.size
    parts = np.repeat(hist, upsample_rate) / upsample_rate  # (bins * upsample_rate,)
    part_width = (hi - lo) / (bins * upsample_rate)
    midpoints = lo + (np.arange(bins * upsample_rate) + 0.5) * part_width  # (bins * rate,)
    edges = np.linspace(new_lo, new_hi, bins + 1)  # (bins + 1,)
    target = np.clip(np.searchsorted(edges, midpoints, side="right") - 1, 0, bins - 1)
    return np.bincount(target, weights=parts, minlength=bins)


def _l2_error(
    hist: np.ndarray, bin_width: float, start_bin: int, end_bin: int, dst_nbins: int
) -> float:
    r"""Expected squared rounding error of quantizing bins ``start_bin..end_bin`` uniformly.

    The range is cut into ``dst_nbins`` quantization steps of width $\Delta$; the mass of
    each source bin is spread uniformly, so a piece $[a, b]$ measured from the centre of
    its step contributes $\rho \int_a^b t^2\,dt = \rho (b^3 - a^3) / 3$ with density $\rho$.
    Bins outside the range are clamped to the first/last step, which counts clipping error.
    """
    dst_width = bin_width * (end_bin - start_bin + 1) / dst_nbins
    if dst_width == 0.0:
        return 0.0
    src_begin = (np.arange(hist.size) - start_bin) * bin_width  # (bins,)
    src_end = src_begin + bin_width  # (bins,)
    dst_of_begin = np.clip(np.floor(src_begin / dst_width), 0, dst_nbins - 1)  # (bins,)
    dst_of_end = np.clip(np.floor(src_end / dst_width), 0, dst_nbins - 1)  # (bins,)
    density = hist / bin_width  # (bins,)
    half = dst_width / 2

    def integral(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
        return density * (b**3 - a**3) / 3

    begin_centre = (dst_of_begin + 0.5) * dst_width
    end_centre = (dst_of_end + 0.5) * dst_width
    error = integral(src_begin - begin_centre, half)  # first, partly covered step
    error += (dst_of_end - dst_of_begin - 1) * integral(-half, half)  # whole steps
    error += integral(-half, src_end - end_centre)  # last, partly covered step
    return float(error.sum())


def l2_range_search(
    hist: np.ndarray, min_val: float, max_val: float, dst_nbins: int = 256
) -> tuple[float, float]:
    r"""PyTorch's non-linear L2 range search over a histogram of ``[min_val, max_val]``.

    Greedily drop histogram mass from one end at a time, in steps of 0.001% of the total,
    always from the end whose bins empty faster; stop as soon as the L2 quantization error
    (:func:`_l2_error`, with ``dst_nbins`` steps) grows. Returns the bin edges kept.

    >>> hist = np.zeros(100); hist[:50] = 1000.0; hist[99] = 1.0  # one far outlier
    >>> l2_range_search(hist, 0.0, 100.0, dst_nbins=16)  # also clips a sliver of the bulk
    (0.0, 49.0)
    """
    bins = hist.size
    bin_width = (max_val - min_val) / bins
    if bin_width == 0.0:
        return float(min_val), float(max_val)
    total = float(hist.sum())
    cumulative = np.cumsum(hist, dtype=np.float64)  # (bins,)
    step = 1e-5
    alpha, beta = 0.0, 1.0  # fractions of the mass to drop below / keep below
    start_bin, end_bin = 0, bins - 1
    norm_min = np.inf
    while alpha < beta:
        next_alpha, next_beta = alpha + step, beta - step
        # First bin l >= start_bin whose cumulative mass reaches next_alpha (capped),
        # last bin r <= end_bin whose cumulative mass stays within next_beta.
        left = np.searchsorted(cumulative, next_alpha * total, side="left")
        left = min(max(int(left), start_bin), end_bin)
        right = np.searchsorted(cumulative, next_beta * total, side="right") - 1
        right = max(min(int(right), end_bin), start_bin)
        next_start, next_end = start_bin, end_bin
        if left - start_bin > end_bin - right:
            next_start, alpha = left, next_alpha
        else:
            next_end, beta = right, next_beta
        if (next_start, next_end) == (start_bin, end_bin):
            continue
        norm = _l2_error(hist, bin_width, next_start, next_end, dst_nbins)
        if norm > norm_min:
            break
        norm_min = norm
        start_bin, end_bin = next_start, next_end
    return min_val + bin_width * start_bin, min_val + bin_width * (end_bin + 1)


def percentile_range(
    hist: np.ndarray, min_val: float, max_val: float, percentile: float
) -> tuple[float, float]:
    r"""Clip the ``(100 - p)``-th and ``p``-th percentiles of the histogrammed data.

    The percentile is read off the cumulative histogram, interpolating linearly inside
    the bin where the cumulative mass crosses it.

    >>> hist = np.full(100, 1.0)  # uniform on [0, 100]
    >>> percentile_range(hist, 0.0, 100.0, percentile=99.0)
    (1.0, 99.0)
    """
    edges = np.linspace(min_val, max_val, hist.size + 1)  # (bins + 1,)
    cdf = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)]) / hist.sum()  # (bins + 1,)
    lo = np.interp((100.0 - percentile) / 100.0, cdf, edges)
    hi = np.interp(percentile / 100.0, cdf, edges)
    return float(lo), float(hi)


def mse_range(
    hist: np.ndarray,
    min_val: float,
    max_val: float,
    qmin: int,
    qmax: int,
    symmetric: bool = False,
    num_candidates: int = 100,
) -> tuple[float, float]:
    r"""The shrunken range $[c \min^-, c \max^+]$ whose fake quantization has the least MSE.

    Each candidate $c \in \{1/n, 2/n, \dots, 1\}$ gives a scale and zero point
    (:func:`~minquant.quant.calc_qparams`); the error is estimated on the histogram,
    every bin represented by its centre $x_i$ with count $h_i$:

    $$\mathrm{MSE}(c) = \frac{\sum_i h_i\,(x_i - \hat{x}_i(c))^2}{\sum_i h_i}.$$

    >>> hist = np.zeros(100); hist[:50] = 1000.0; hist[99] = 1.0  # one far outlier
    >>> mse_range(hist, 0.0, 100.0, qmin=0, qmax=15)
    (0.0, 48.0)
    """
    edges = np.linspace(min_val, max_val, hist.size + 1)  # (bins + 1,)
    centres = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)  # (bins,)
    min_neg, max_pos = min(min_val, 0.0), max(max_val, 0.0)
    best_error, best = np.inf, (min_neg, max_pos)
    for c in np.arange(1, num_candidates + 1) / num_candidates:
        lo, hi = c * min_neg, c * max_pos
        scale, zero_point = calc_qparams(lo, hi, qmin, qmax, symmetric)
        x_hat = fake_quantize(centres, scale, zero_point, qmin, qmax)  # (bins,)
        error = float(np.sum(hist * (centres - x_hat) ** 2))
        # NOTE: strict '<' keeps the narrowest range among equal errors.
        if error < best_error:
            best_error, best = error, (lo, hi)
    return float(best[0]), float(best[1])


def entropy_threshold(
    hist: np.ndarray,
    max_abs: float,
    num_levels: int = 128,
    start_bin: int | None = None,
    stride: int = 1,
) -> float:
    r"""TensorRT's KL-divergence threshold $T$ from a histogram of $|x|$ over ``[0, max_abs]``.

    Each candidate threshold is a bin edge $i \in$ ``range(start_bin, bins + 1, stride)``
    (``start_bin`` defaults to ``num_levels``):

    * the reference distribution $P$ is the first $i$ bins, with all the mass beyond them
      folded into bin $i - 1$ (what clipping at $T$ does);
    * the candidate distribution $Q$ merges the first $i$ bins into ``num_levels`` groups,
      bin $j$ going to group $\lfloor j \cdot \text{num\_levels} / i \rfloor$ (what
      quantizing does), and spreads each group's mass back evenly over its *non-empty* bins
      (empty bins stay empty; the clipped mass is not in $Q$).

    Both are normalised and compared with the Kullback-Leibler divergence

    $$D_{KL}(P\,\|\,Q) = \sum_{j:\,p_j > 0} p_j \log \frac{p_j}{q_j},$$

    infinite where some $p_j > 0$ has $q_j = 0$. The edge $T$ of the candidate with the
    smallest divergence is returned (the largest such edge on a tie).

    NOTE: before the search the count of the first bin is replaced by that of the second.
    After a ReLU most values are exact zeros; they all land in bin 0 and would dominate
    $P$, so $D_{KL}$ would favour tiny thresholds whose groups are single bins, resolving
    the spike exactly while clipping the whole tail. Zero is exactly representable (it is
    the zero point), so those values carry no quantization error and should not steer $T$.

    NOTE: TensorRT always starts at bin 128, which is its number of levels for signed
    8-bit. With more levels than that (unsigned 8-bit: 256), candidates $i$ below
    ``num_levels`` give every bin its own level, so $Q = P$ but for the clipped mass and
    no rounding cost is counted; a spike in bin $i - 1$ then makes $D_{KL}$ almost 0. On
    the packaged CNN's first ReLU output (spikes at each channel's bias, where the image
    background is) that picks $T = 0.41$ out of 6.2. Hence the default ``num_levels``.

    Reference: NVIDIA TensorRT ``tools/pytorch-quantization``,
    ``pytorch_quantization/calib/histogram.py``, ``_compute_amax_entropy`` (2048 bins,
    ``start_bin=128``, ``stride=1``, ``num_levels`` $= 2^{b-1}$ signed or $2^b$ unsigned);
    S. Migacz, "8-bit Inference with TensorRT", GTC 2017.

    >>> hist = np.floor(1e4 * np.exp(-np.arange(1000) / 50.0))  # a long exponential tail
    >>> entropy_threshold(hist, 1000.0, num_levels=128)
    460.0
    >>> hist[0] = 1e9  # a spike at zero, as after a ReLU: ignored
    >>> entropy_threshold(hist, 1000.0, num_levels=128)
    460.0
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if start_bin is not None and start_bin < 1:
        raise ValueError(f"start_bin must be >= 1, got {start_bin}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    bins = hist.size
    edges = np.linspace(0.0, max_abs, bins + 1)  # (bins + 1,)
    candidates = range(num_levels if start_bin is None else start_bin, bins + 1, stride)
    if bins < 2 or len(candidates) == 0:
        return float(max_abs)
    hist = hist.astype(np.float64)  # (bins,) a copy: the caller's histogram is kept
    hist[0] = hist[1]  # NOTE: flatten the spike of exact zeros (see above)
    divergences = np.empty(len(candidates))  # (candidates,)
    for k, i in enumerate(candidates):
        p = hist[:i].copy()  # (i,)
        p[i - 1] += hist[i:].sum()  # clipped outliers pile up in the last bin
        group = (np.arange(i) * num_levels) // i  # (i,) which quantization level
        nonempty = hist[:i] > 0  # (i,)
        group_mass = np.bincount(group, weights=hist[:i], minlength=num_levels)
        group_size = np.bincount(group, weights=nonempty, minlength=num_levels)
        q = np.where(nonempty, group_mass[group] / np.maximum(group_size[group], 1), 0.0)
        divergences[k] = _kl_divergence(p, q)
    # NOTE: the last minimum, as TensorRT: on a tie the wider range wins.
    best = len(candidates) - 1 - int(np.argmin(divergences[::-1]))
    return float(edges[candidates[best]])


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    r"""$D_{KL}(P\,\|\,Q)$ of two count vectors, each normalised to sum 1 first.

    As ``scipy.stats.entropy(p, q)``: terms with $p_j = 0$ count 0, and the divergence is
    infinite if some $p_j > 0$ has $q_j = 0$.

    >>> kl = _kl_divergence(np.array([1.0, 1.0]), np.array([1.0, 3.0]))
    >>> bool(np.isclose(kl, np.log(2) - np.log(3) / 2))
    True
    >>> _kl_divergence(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    inf
    """
    mask = p > 0  # (n,)
    if np.any(q[mask] == 0):
        return np.inf
    p, q = p[mask] / p.sum(), q[mask] / q.sum()
    return float(np.sum(p * np.log(p / q)))
