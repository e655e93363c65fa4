r"""Exercise 7: folding BatchNorm into the convolution before it.

Follows notebook 05 (a quantized CNN). In evaluation mode a ``BatchNorm2d`` is a fixed affine
map per channel, so the ``Conv2d -> BatchNorm2d`` pair is one convolution with new weights
and bias, and the integer model needs no BatchNorm at all:

$$\mathrm{BN}(\mathrm{conv}(x; w, b)) = \mathrm{conv}(x; w', b'), \qquad
w'_c = w_c\,\frac{\gamma_c}{\sqrt{\sigma_c^2 + \epsilon}}, \qquad
b'_c = (b_c - \mu_c)\,\frac{\gamma_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c.$$

Write the arithmetic with NumPy; you may use ``minquant.nn`` layers to hold the result, but
do not call ``minquant.ptq.fold_batchnorm``. Check your work with ``pytest exercises -m ex7``.

References: B. Jacob et al., CVPR 2018 (arXiv:1712.05877), section 3.2; S. Ioffe,
C. Szegedy, "Batch Normalization", ICML 2015 (arXiv:1502.03167).
"""

import numpy as np

from minquant import nn


def bn_affine(
    gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    r"""Exercise 7.1: BatchNorm in evaluation mode as $y_c = a_c x_c + d_c$ per channel.

    $$\mathrm{BN}(x)_c = \gamma_c \frac{x_c - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c
    = a_c x_c + d_c, \qquad a_c = \frac{\gamma_c}{\sqrt{\sigma_c^2 + \epsilon}}, \qquad
    d_c = \beta_c - \mu_c a_c.$$

    All arguments are (C,) arrays (``mean``, ``var`` are the running statistics). Compute in
    float64 and return two float64 (C,) arrays ``(a, d)``.

    Worked example: $\gamma = 2$, $\beta = 1$, $\mu = 3$, $\sigma^2 = 4 - \epsilon$ gives
    $a = 2 / 2 = 1$ and $d = 1 - 3 = -2$.
    """
    raise NotImplementedError("Exercise 7.1: bn_affine")


def fold_batchnorm(
    w: np.ndarray,
    b: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Exercise 7.2: the weight and bias of ``Conv2d -> BatchNorm2d`` merged into one conv.

    $$w'_c = a_c\, w_c, \qquad b'_c = a_c\, b_c + d_c = (b_c - \mu_c)\, a_c + \beta_c$$

    with $(a, d)$ from :func:`bn_affine`; ``w`` is (C_out, C_in, kh, kw) and ``b`` (C_out,)
    or ``None`` (a conv without bias: $b = 0$). Compute in float64 and return float32
    ``(w_folded, b_folded)`` of shapes (C_out, C_in, kh, kw) and (C_out,).

    Worked example: one channel with $w = [[[[1, -2]]]]$, $b = 0.5$ and the BatchNorm of the
    7.1 example ($a = 1$, $d = -2$) gives $w' = w$ and $b' = 0.5 - 2 = -1.5$.
    """
    raise NotImplementedError("Exercise 7.2: fold_batchnorm")


def fold_model(model: nn.Sequential) -> nn.Sequential:
    r"""Exercise 7.3: a copy of ``model`` with every ``Conv2d -> BatchNorm2d`` pair folded.

    $$[\dots, \mathrm{Conv2d}(w, b), \mathrm{BatchNorm2d}(\gamma, \beta, \mu, \sigma^2),
    \dots] \;\to\; [\dots, \mathrm{Conv2d}(w', b'), \dots]$$

    Walk the layers of ``model`` (an ``nn.Sequential``; iterate over it). Deep-copy every
    layer (``copy.deepcopy``) so that ``model`` is left unchanged; when a ``BatchNorm2d``
    follows a ``Conv2d``, replace the copied conv's ``weight`` and ``bias`` by
    ``nn.Parameter(w_folded)`` and ``nn.Parameter(b_folded)`` from :func:`fold_batchnorm`
    (using the BatchNorm's ``weight.data``, ``bias.data``, ``running_mean``, ``running_var``,
    ``eps``) and drop the BatchNorm. A ``BatchNorm2d`` after anything else is a
    ``ValueError``. Return ``nn.Sequential(*layers).eval()``.

    Worked example: ``[Conv2d, BatchNorm2d, ReLU, MaxPool2d, Flatten, Linear]`` becomes
    ``[Conv2d, ReLU, MaxPool2d, Flatten, Linear]``, and both models give the same output in
    evaluation mode (up to float32 rounding).
    """
    raise NotImplementedError("Exercise 7.3: fold_model")
