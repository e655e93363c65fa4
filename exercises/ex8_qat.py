r"""Exercise 8: fake quantization, the straight-through estimator, and QAT of a small MLP.

Follows notebook 06 (quantization-aware training). A fake quantizer rounds a tensor onto the
integer grid and maps it straight back, so the network trains in float but *sees* the
quantization error:

$$q = z + \mathrm{round}(x / s), \qquad \hat{x} = s\,(\mathrm{clip}(q, q_{min}, q_{max}) - z).$$

``round`` has zero gradient almost everywhere, so backward pretends it is the identity
inside the clipping range and blocks the gradient outside it (the straight-through
estimator, STE):

$$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial \hat{x}} \cdot
[\,q_{min} \le q \le q_{max}\,].$$

Write the arithmetic with NumPy; you may use ``minquant.nn`` (layers, ``cross_entropy``,
``Adam``) and ``minquant.data``, but not ``minquant.quant``, ``minquant.fake_quant`` or
``minquant.qat``. Check your work with ``pytest exercises -m ex8``.

References: Y. Bengio, N. Léonard, A. Courville, arXiv:1308.3432 (2013), the STE;
B. Jacob et al., CVPR 2018 (arXiv:1712.05877), section 3.
"""

import numpy as np

from minquant import nn

#: float32 machine epsilon, the smallest scale ever used (as PyTorch).
EPS = np.finfo(np.float32).eps


def fake_quantize(
    x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Exercise 8.1: fake-quantize ``x`` and return the STE mask with it.

    $$q = z + \mathrm{round}(x \cdot s^{-1}), \qquad
    \hat{x} = s\,(\mathrm{clip}(q, q_{min}, q_{max}) - z), \qquad
    \text{mask} = [\,q_{min} \le q \le q_{max}\,]$$

    exactly as ``torch.fake_quantize_per_tensor_affine``: convert ``x`` to float32, take
    $s^{-1}$ = ``np.float32(1) / np.float32(scale)``, multiply in float32, round half to even
    (``np.rint``), add the zero point *after* rounding; the mask is taken *before* clipping.
    Return ``(x_hat, mask)``: float32 and bool arrays of the shape of ``x``.

    Worked example: $s = 1$, $z = 0$, $[-4, 3]$ and ``x = [-1.0, 0.5, 1.5, 9.0]`` give
    $q$ = ``[-1, 0, 2, 9]`` (ties to even), ``x_hat = [-1.0, 0.0, 2.0, 3.0]`` and
    ``mask = [True, True, True, False]``.
    """
    raise NotImplementedError("Exercise 8.1: fake_quantize")


class QATLinear(nn.Linear):
    r"""Exercise 8.2: a Linear layer that trains with fake-quantized weights.

    Forward, with the symmetric signed ``num_bits`` range $[q_{min}, q_{max}] =
    [-2^{b-1}, 2^{b-1} - 1]$ and a scale recomputed from the current weights:

    $$s = \max\Big(\frac{\max_{ij} |W_{ij}|}{(q_{max} - q_{min}) / 2},\ \epsilon\Big),
    \qquad (\hat{W}, m) = \texttt{fake\_quantize}(W, s, 0, q_{min}, q_{max}),
    \qquad y = x \hat{W}^\top + b$$

    (in float32, as ``minquant``'s symmetric observers; $\epsilon$ = ``EPS``). Backward,
    with $g = \partial L / \partial y$ of shape (N, out), the STE lets the gradient reach the
    float weights $W$ where $m$ is true:

    $$\frac{\partial L}{\partial x} = g \hat{W}, \qquad
    \frac{\partial L}{\partial W} = (g^\top x) \odot m, \qquad
    \frac{\partial L}{\partial b} = \textstyle\sum_n g_n.$$

    ``forward`` must keep what ``backward`` needs (e.g. in ``self._cache``); ``backward``
    *adds* the parameter gradients to ``self.weight.grad`` and ``self.bias.grad`` (as every
    ``minquant.nn`` layer does) and returns $\partial L / \partial x$.

    Worked example: 2 bits ($[-2, 1]$), $W = [[1.0, -0.5, 0.2]]$ gives $s = 1 / 1.5$,
    $W / s = [1.5, -0.75, 0.3]$, $q = [2, -1, 0]$, $\hat{W} = [[1/1.5, -1/1.5, 0]]$ and
    $m = [[\text{False}, \text{True}, \text{True}]]$: the largest weight gets no gradient.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_bits: int = 8,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(in_features, out_features, rng=rng)
        self.num_bits = num_bits
        self.qmin, self.qmax = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1

    def weight_scale(self) -> np.float32:
        r"""$s = \max(\max |W| / ((q_{max} - q_{min}) / 2), \epsilon)$ in float32."""
        raise NotImplementedError("Exercise 8.2: QATLinear.weight_scale")

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError("Exercise 8.2: QATLinear.forward")

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        raise NotImplementedError("Exercise 8.2: QATLinear.backward")


def train_qat_mlp(
    X: np.ndarray,
    y: np.ndarray,
    num_bits: int = 4,
    hidden: int = 64,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    rng: np.random.Generator | None = None,
) -> nn.Sequential:
    r"""Exercise 8.3: quantization-aware training of a small MLP on images ``X`` (N, 1, 28, 28).

    $$\text{model} = [\text{Flatten},\ \text{QATLinear}(784, h),\ \text{ReLU},\
    \text{QATLinear}(h, 10)], \qquad \theta \leftarrow \mathrm{Adam}\big(\nabla_\theta
    \mathrm{CE}(\text{model}(X_{batch}), y_{batch})\big)$$

    Build the model with ``num_bits`` for both QATLinear layers (pass ``rng`` to them), then
    for each epoch visit the examples in the order ``rng.permutation(len(X))`` in batches of
    ``batch_size``: forward, ``nn.cross_entropy`` (loss and gradient of the logits),
    ``optimizer.zero_grad()``, ``model.backward``, ``optimizer.step()`` with
    ``nn.Adam(model.parameters(), lr)``. Return the model in evaluation mode
    (``model.eval()``); its float weights are the "master" copy, and what it computes uses
    their ``num_bits`` fake-quantized version.

    Worked example: with 4-bit weights, 64 hidden units and 3 epochs on the 4,000 training
    digits of ``minquant.data.load_mnist``, the test accuracy is about 90%: close to the
    float MLP, although every weight takes one of 16 values.
    """
    raise NotImplementedError("Exercise 8.3: train_qat_mlp")
