r"""Exercise 12: GPTQ's error feedback, one column at a time.

Follows notebook 11 (GPTQ and AWQ). Round to nearest rounds each weight of a row $w$ on its
own. GPTQ rounds the input columns in order and, after rounding column $q$, moves its error
onto the columns not yet rounded, weighted by the inverse Hessian of the layer's inputs
$X$ (tokens, in):

$$H = \tfrac{2}{N} X^\top X + \lambda I, \qquad \lambda = \text{damp} \cdot
\mathrm{mean}(\mathrm{diag}\, H), \qquad H^{-1} = U^\top U \ (U \text{ upper triangular}),$$

$$e = \frac{w_q - \hat{w}_q}{U_{qq}}, \qquad w_{q:} \leftarrow w_{q:} - e\, U_{q,q:}.$$

The rows of the upper Cholesky factor $U$ of $H^{-1}$ are exactly the inverse-Hessian rows
of the optimal brain surgeon update after the earlier columns have been removed.

Write every function with NumPy only (float64). Check your work with
``pytest exercises -m ex12``: the tests compare your result with ``mq.llm.gptq`` (one
group per row, ``group_size=None``), which adds lazy batch updates and per-group scales.

Reference: E. Frantar et al., "GPTQ", ICLR 2023 (arXiv:2210.17323), Algorithm 1.
"""

import numpy as np


def inverse_hessian_cholesky(X: np.ndarray, damp: float = 0.01) -> np.ndarray:
    r"""Exercise 12.1: the upper triangular $U$ (in, in) with $(H + \lambda I)^{-1} = U^\top U$.

    $H = \frac{2}{N} X^\top X$ for ``X`` (N, in), in float64;
    $\lambda = \text{damp} \cdot \mathrm{mean}(\mathrm{diag}\,H)$ is added to the diagonal.
    ``np.linalg.cholesky`` returns the *lower* factor $L$ of a matrix ($A = L L^\top$): take
    the lower factor of $H^{-1}$ and transpose it.

    Worked example: ``X = np.sqrt(1.5) * [[1, 1], [1, 0], [0, 1]]`` gives
    $H = [[2, 1], [1, 2]]$; with ``damp=0``, $H^{-1} = \frac{1}{3}[[2, -1], [-1, 2]]$ and
    $U = [[0.8165, -0.4082], [0, 0.7071]]$ (to 4 decimals).
    """
    raise NotImplementedError("Exercise 12.1: inverse_hessian_cholesky")


def gptq_columns(
    w: np.ndarray,
    U: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qmin: int,
    qmax: int,
) -> np.ndarray:
    r"""Exercise 12.2: GPTQ's $\hat{W}$ (out, in) float64, one column at a time.

    ``w`` (out, in); ``U`` (in, in) from :func:`inverse_hessian_cholesky`; one ``scale``
    and ``zero_point`` per row, (out,). Work on a float64 copy ``W`` of ``w``; for each
    column ``q = 0, 1, ...``:

    1. round: ``codes = clip(rint(W[:, q] / scale) + zero_point, qmin, qmax)`` and
       ``w_hat[:, q] = (codes - zero_point) * scale``;
    2. the error, scaled: ``e = (W[:, q] - w_hat[:, q]) / U[q, q]`` (out,);
    3. feed it forward: ``W[:, q:] -= np.outer(e, U[q, q:])``.

    Worked example: with ``U`` the identity the columns do not talk to each other and the
    result is round to nearest; with ``w = [[0.3, 0.3]]``, ``scale = [0.5]``,
    ``zero_point = [0]``, ``qmin, qmax = -2, 1`` and the ``U`` of the 12.1 example, column 0
    rounds up to 0.5 (error -0.2, so ``e = -0.2 / 0.8165``) and column 1 becomes
    ``0.3 - e * (-0.4082) = 0.3 - 0.1 = 0.2``, which rounds down to 0: ``[[0.5, 0.0]]``
    (the two inputs are positively correlated, so the overshoot of the first weight is
    paid back by the second; round to nearest would give ``[[0.5, 0.5]]``).
    """
    raise NotImplementedError("Exercise 12.2: gptq_columns")
