r"""Exercise 3: calibration, choosing the range $[\alpha, \beta]$ to quantize with.

Follows notebook 03 (calibration). Min/max calibration keeps every outlier and spends most
integer codes on a few rare values. A narrower range trades *clipping error* (values outside
it) against *rounding error* (the step $s = (\beta - \alpha) / (q_{max} - q_{min})$ inside
it). Observers keep a histogram of the data (``hist``: counts of ``len(hist)`` equal bins
over ``[min_val, max_val]``) and pick the range from it.

Write the range searches with NumPy. You may call ``minquant.calc_qparams`` and
``minquant.fake_quantize`` (exercise 1 had you write them), but not ``minquant.calibration``
or ``minquant.observers``. Check your work with ``pytest exercises -m ex3``.

References: H. Wu et al., "Integer Quantization for Deep Learning Inference: Principles and
Empirical Evaluation", 2020 (arXiv:2004.09602); M. Nagel et al., "A White Paper on Neural
Network Quantization", 2021 (arXiv:2106.08295), section 3.4.
"""

import numpy as np

import minquant as mq


def percentile_range(
    hist: np.ndarray, min_val: float, max_val: float, percentile: float
) -> tuple[float, float]:
    r"""Exercise 3.1: the $(100 - p)$-th and $p$-th percentiles of histogrammed data.

    $$\mathrm{cdf}_0 = 0, \quad \mathrm{cdf}_i = \frac{\sum_{j < i} h_j}{\sum_j h_j}
    \ (i = 1 \dots n), \qquad \alpha = \mathrm{cdf}^{-1}\Big(\frac{100 - p}{100}\Big), \quad
    \beta = \mathrm{cdf}^{-1}\Big(\frac{p}{100}\Big)$$

    where ``cdf[i]`` is the fraction of the data below bin edge ``edges[i]`` (``edges`` =
    ``np.linspace(min_val, max_val, n + 1)``) and $\mathrm{cdf}^{-1}$ interpolates linearly
    between edges (``np.interp(level, cdf, edges)``). Return two Python floats.

    Worked example: 100 bins of one count each over [0, 100] (uniform data) and $p = 99$
    give $(1.0, 99.0)$.
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
    r"""Exercise 3.2: the shrunken range $[c\,m^-, c\,m^+]$ whose fake quantization has least error.

    With $m^- = \min(\text{min\_val}, 0)$, $m^+ = \max(\text{max\_val}, 0)$ and each bin
    represented by its centre $x_i$ (float32) with count $h_i$, try
    $c = k / n$ for $k = 1 \dots n$ (``np.arange(1, n + 1) / n``, $n$ = ``num_candidates``):

    $$(s_c, z_c) = \texttt{calc\_qparams}(c\,m^-, c\,m^+), \qquad
    E(c) = \sum_i h_i\,\big(x_i - \hat{x}_i(c)\big)^2, \qquad
    \hat{x}_i(c) = \texttt{fake\_quantize}(x_i, s_c, z_c)$$

    and return the range of the smallest $E(c)$ as two Python floats; on equal errors keep
    the first (narrowest) candidate (compare with a strict ``<``).

    Worked example: 50 bins of 1000 counts over [0, 50] and one count in the last bin of
    [0, 100], with 4 bits unsigned ($[0, 15]$): keeping the outlier makes the step
    $100/15 \approx 6.7$; clipping it costs one large error but gives a step of $3.2$ for
    the bulk. The best candidate is $c = 0.48$: $(0.0, 48.0)$.
    """
    edges = np.linspace(min_val, max_val, hist.size + 1)  # (bins + 1,)
    centres = ((edges[:-1] + edges[1:]) / 2).astype(np.float32)  # (bins,)
    min_neg, max_pos = min(min_val, 0.0), max(max_val, 0.0)
    best_error, best = np.inf, (min_neg, max_pos)
    for c in np.arange(1, num_candidates + 1) / num_candidates:
        lo, hi = c * min_neg, c * max_pos
        scale, zero_point = mq.calc_qparams(lo, hi, qmin, qmax, symmetric)
        x_hat = mq.fake_quantize(centres, scale, zero_point, qmin, qmax)  # (bins,)
        error = float(np.sum(hist * (centres - x_hat) ** 2))
        if error < best_error:
            best_error, best = error, (lo, hi)
    return float(best[0]), float(best[1])


def calibrate(
    x: np.ndarray,
    method: str,
    num_bits: int = 8,
    bins: int = 2048,
    percentile: float = 99.99,
    num_candidates: int = 100,
) -> tuple[np.float32, int]:
    r"""Exercise 3.3: affine unsigned ``(scale, zero_point)`` for ``x`` from its histogram.

    $$h = \mathrm{histogram}(x,\ \text{bins},\ [\min x, \max x]), \qquad
    [\alpha, \beta] = \begin{cases} \texttt{percentile\_range}(h, \dots, p) \\
    \texttt{mse\_range}(h, \dots, 0, 2^b - 1) \end{cases}, \qquad
    (s, z) = \texttt{calc\_qparams}(\alpha, \beta, 0, 2^b - 1)$$

    ``method`` is ``"percentile"`` or ``"mse"`` (anything else: ``ValueError``). Convert
    ``x`` to float32, histogram it with ``np.histogram(x, bins=bins, range=(lo, hi))`` where
    ``lo, hi = float(x.min()), float(x.max())``, convert the chosen range to ``np.float32``
    before ``calc_qparams``, and return ``scale`` as ``np.float32`` and ``zero_point`` as a
    Python int. This is what ``PercentileObserver`` and ``MSEObserver`` do after one batch.

    Worked example: 100,001 values evenly spaced over [0, 1000] and the 99th percentile give
    the range [10, 990]; ``calc_qparams`` widens it to [0, 990] to hold 0, so
    $s = 990 / 255 \approx 3.882$ and $z = 0$.
    """
    if method not in ("percentile", "mse"):
        raise ValueError(f"method must be 'percentile' or 'mse', got {method!r}")
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    hist, _ = np.histogram(x, bins=bins, range=(lo, hi))  # (bins,)
    hist = hist.astype(np.float64)
    qmin, qmax = 0, 2**num_bits - 1
    if method == "percentile":
        alpha, beta = percentile_range(hist, lo, hi, percentile)
    else:
        alpha, beta = mse_range(hist, lo, hi, qmin, qmax, False, num_candidates)
    scale, zero_point = mq.calc_qparams(np.float32(alpha), np.float32(beta), qmin, qmax)
    return np.float32(scale[0]), int(zero_point[0])
