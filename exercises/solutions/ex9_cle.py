r"""Exercise 9: cross-layer equalization (CLE) of one pair of layers.

Follows notebook 08 (advanced PTQ). Two layers with a positively homogeneous activation
between them (ReLU: $f(x / s) = f(x) / s$ for $s > 0$) compute the same function when output
channel $i$ of the first layer is divided by $s_i$ and input channel $i$ of the second is
multiplied by $s_i$. CLE (Nagel et al. 2019) picks $s_i$ so that both see the same range:

$$r^{(1)}_i = \max |W^{(1)}_{i,\cdot}|, \qquad r^{(2)}_i = \max |W^{(2)}_{\cdot,i}|, \qquad
s_i = \frac{1}{r^{(2)}_i}\sqrt{r^{(1)}_i\, r^{(2)}_i}
\ \Rightarrow\ \frac{r^{(1)}_i}{s_i} = r^{(2)}_i\, s_i = \sqrt{r^{(1)}_i r^{(2)}_i}.$$

Write the arithmetic with NumPy; do not call ``minquant.ptq.equalize`` or its helpers.
Check your work with ``pytest exercises -m ex9``.

Reference: M. Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019 (arXiv:1906.04721), section 4.1.
"""

import numpy as np


def output_ranges(w: np.ndarray) -> np.ndarray:
    r"""Exercise 9.1: $r^{(1)}_i = \max |w_{i, \dots}|$ for each output channel $i$.

    ``w`` is a Conv2d weight (out, in, kh, kw) or a Linear weight (out, in). Return a
    float64 (out,) array.

    Worked example: ``w = [[1, -3], [0.5, 2]]`` gives ``[3, 2]``.
    """
    flat = np.abs(np.asarray(w, dtype=np.float64)).reshape(w.shape[0], -1)  # (out, rest)
    return flat.max(axis=1)


def input_ranges(w: np.ndarray, groups: int = 1) -> np.ndarray:
    r"""Exercise 9.2: $r^{(2)}_j = \max |w_{\cdot, j, \dots}|$ for each input channel $j$.

    ``w`` is (out, in / groups, kh, kw) for a Conv2d with ``groups`` groups, or (out, in)
    for a Linear (``groups=1``). With groups, input channel $j$ (of group $g = j \div
    (in/groups)$) is seen only by the output channels of group $g$; for a depthwise
    convolution (``groups`` = in = out, ``w`` (C, 1, kh, kw)) input channel $j$ is seen by
    output channel $j$ alone. Return a float64 (in,) array.

    Worked example: ``w = [[1, -3], [0.5, 2]]`` (a Linear) gives ``[1, 3]``; a depthwise
    weight with filters of largest magnitude 4 and 5 gives ``[4, 5]``.
    """
    a = np.abs(np.asarray(w, dtype=np.float64))
    a = a.reshape(a.shape[0], a.shape[1], -1).max(axis=2)  # (out, in / groups)
    per_group = a.reshape(groups, a.shape[0] // groups, a.shape[1]).max(axis=1)  # (g, in/g)
    return per_group.reshape(-1)  # (in,)


def cle_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    r"""Exercise 9.3: $s_i = \frac{1}{r^{(2)}_i}\sqrt{r^{(1)}_i r^{(2)}_i}$, in float64.

    A dead channel (``r1[i] == 0`` or ``r2[i] == 0``) keeps $s_i = 1$ (the formula would
    divide by zero or scale by zero).

    Worked example: ``r1 = [8, 1, 0]``, ``r2 = [2, 4, 3]`` gives ``[2, 0.5, 1]``
    ($\sqrt{16}/2$, $\sqrt{4}/4$, dead).
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    alive = (r1 > 0) & (r2 > 0)
    safe_r2 = np.where(alive, r2, 1.0)
    return np.where(alive, np.sqrt(r1 * r2) / safe_r2, 1.0)


def equalize_pair(
    w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, groups2: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Exercise 9.4: the equalized pair $(W^{(1)}/s,\ b^{(1)}/s,\ W^{(2)} s)$ and $s$.

    ``w1`` (out1, ...) and ``b1`` (out1,) belong to the first layer; ``w2`` (out2, out1 /
    groups2, ...) to the second (``groups2`` its groups; a Linear has 1). Compute $s$ with
    :func:`cle_scales` from :func:`output_ranges` of ``w1`` and :func:`input_ranges` of
    ``w2``, divide output channel $i$ of ``w1`` and ``b1[i]`` by $s_i$ and multiply input
    channel $i$ of ``w2`` by $s_i$ (for a depthwise ``w2``, that is its output channel $i$
    too: row $i$ of ``w2``). Compute in float64; return ``(w1_eq, b1_eq, w2_eq, s)``, all
    float64, of the shapes of the inputs and (out1,).

    Worked example: ``w1 = [[8], [1]]``, ``b1 = [4, 1]``, ``w2 = [[2, 4]]`` gives
    ``s = [2, 0.5]``, ``w1_eq = [[4], [2]]``, ``b1_eq = [2, 2]``, ``w2_eq = [[4, 2]]``.
    """
    w1 = np.asarray(w1, dtype=np.float64)
    w2 = np.asarray(w2, dtype=np.float64)
    s = cle_scales(output_ranges(w1), input_ranges(w2, groups2))  # (out1,)
    w1_eq = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))  # row i divided by s_i
    b1_eq = np.asarray(b1, dtype=np.float64) / s
    if groups2 == 1:
        w2_eq = w2 * s.reshape((1, -1) + (1,) * (w2.ndim - 2))  # column i times s_i
    else:
        per_group = w2.shape[1]  # input channels per group
        out_per_group = w2.shape[0] // groups2
        # NOTE: input channel j = g * per_group + k sits at column k of group g's rows.
        s_grid = s.reshape(groups2, 1, per_group)  # (g, 1, in/g)
        grid = w2.reshape(groups2, out_per_group, per_group, -1) * s_grid[..., None]
        w2_eq = grid.reshape(w2.shape)
    return w1_eq, b1_eq, w2_eq, s
