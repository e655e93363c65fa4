r"""Low-bit weights for QAT: scales from the mean magnitude, and ternary weights.

At 2 bits the min/max range is a poor weight scale: one outlier stretches a grid of 3 or 4
levels until most weights round to 0. Two published rules take the scale from the mean
magnitude $\overline{|w|}$ instead, and :class:`~minquant.fake_quant.FakeQuantize` takes
them as its observer:

* LSQ's initial step size, $s = 2\,\overline{|w|} / \sqrt{q_{max}}$;
* BitNet b1.58's absmean scale $\gamma = \overline{|w|}$ with ternary codes $\{-1, 0, 1\}$
  (:class:`TernaryFakeQuantize`).

``prepare_qat(..., weight_quant="lsq" | "ternary")`` uses them (:mod:`minquant.qat`).

References:

* S. K. Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv:1902.08153).
* S. Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits", 2024
  (arXiv:2402.17764).
"""

import numpy as np

from minquant.fake_quant import FakeQuantize
from minquant.quant import EPS, check_finite, qrange


class AbsMeanObserver:
    r"""Weight scale from the mean magnitude: $s = c \cdot \overline{|w|}$, zero point 0.

    Two published rules for low-bit weights, where the min/max range is a poor scale (one
    outlier stretches a grid of 3 or 4 levels until most weights round to 0):

    * LSQ's initial step size (Esser et al. 2020), $c = 2 / \sqrt{q_{max}}$;
    * BitNet b1.58's absmean scale (Ma et al. 2024), $c = 1$, with the ternary grid
      $w_q = \mathrm{clip}(\mathrm{round}(w / \overline{|w|}), -1, 1)$.

    The mean is taken over the whole tensor (``axis=None``) or per channel along ``axis``.
    Each call replaces the statistics (the scale follows the current weights). The keyword
    arguments of the other observers are accepted; the grid is always symmetric.

    >>> obs = AbsMeanObserver(num_bits=2, signed=True, narrow_range=True)   # ternary
    >>> _ = obs(np.array([-0.4, 0.0, 0.1, 0.3], dtype=np.float32))
    >>> obs.calculate_qparams()
    (array([0.2], dtype=float32), array([0]))
    """

    def __init__(
        self,
        num_bits: int = 2,
        signed: bool = True,
        symmetric: bool = True,
        narrow_range: bool = True,
        axis: int | None = None,
        factor: float = 1.0,
    ) -> None:
        if not signed:
            raise ValueError("AbsMeanObserver: needs a signed (weight) grid, got signed=False")
        if not factor > 0:
            raise ValueError(f"AbsMeanObserver: factor must be > 0, got {factor!r}")
        self.qmin, self.qmax = qrange(num_bits, signed=True, narrow_range=narrow_range)
        self.axis, self.factor = axis, float(factor)
        self.abs_mean: np.ndarray | None = None  # (1,) or (C,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        check_finite("x", x)
        if x.size == 0:
            raise ValueError("AbsMeanObserver: x is empty")
        if self.axis is None:
            self.abs_mean = np.abs(x).mean(dtype=np.float64).reshape(1)  # (1,)
        else:
            rows = np.moveaxis(np.abs(x), self.axis, 0).reshape(x.shape[self.axis], -1)
            self.abs_mean = rows.mean(axis=1, dtype=np.float64)  # (C,)
        return x

    def calculate_qparams(self) -> tuple[np.ndarray, np.ndarray]:
        if self.abs_mean is None:
            return np.ones(1, dtype=np.float32), np.zeros(1, dtype=np.int64)
        # NOTE: an all-zero channel would get scale 0: clamp to eps, as the min/max observers.
        scale = np.maximum(self.factor * self.abs_mean, EPS).astype(np.float32)
        return scale, np.zeros(scale.shape, dtype=np.int64)


def lsq_init_factor(qmax: int) -> float:
    r"""LSQ's initial step size as a multiple of $\overline{|w|}$: $2 / \sqrt{q_{max}}$.

    >>> lsq_init_factor(7), lsq_init_factor(1)
    (0.7559289460184544, 2.0)
    """
    return 2.0 / float(np.sqrt(qmax))


class TernaryFakeQuantize(FakeQuantize):
    r"""BitNet b1.58 ternary weights: $\hat{w} = \gamma\,\mathrm{clip}(\mathrm{round}(w/\gamma),
    -1, 1)$ with $\gamma = \overline{|w|}$ (Ma et al., "The Era of 1-bit LLMs", 2024).

    A :class:`FakeQuantize` on the narrow 2-bit grid $\{-1, 0, 1\}$ ($\log_2 3 \approx 1.58$
    bits) whose scale is recomputed from the current weights at every training step
    (:class:`AbsMeanObserver`, per tensor or per channel along ``axis``). The backward pass
    is BitNet's straight-through estimator, ``w + (quant(w) - w).detach()``: the gradient
    passes **unmasked**, also for the weights beyond $\pm 1.5\gamma$ (a clipping mask would
    freeze the largest weights for good, since $\gamma$ moves with them).
    ``convert`` stores int8 codes in $\{-1, 0, 1\}$ with the scale $\gamma$.

    >>> fq = TernaryFakeQuantize()
    >>> fq(np.array([-0.4, 0.0, 0.15, 0.25], dtype=np.float32)).tolist()   # gamma = 0.2
    [-0.20000000298023224, 0.0, 0.20000000298023224, 0.20000000298023224]
    >>> fq.backward(np.ones(4, dtype=np.float32)).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, axis: int | None = None) -> None:
        super().__init__(
            num_bits=2,
            signed=True,
            symmetric=True,
            axis=axis,
            observer=AbsMeanObserver,
            narrow_range=True,
        )

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        self._need_cache(self._cache)
        # NOTE: identity (BitNet's detach trick), not the clipping mask of FakeQuantize.
        return np.asarray(grad_out, dtype=np.float32)
