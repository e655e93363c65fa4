"""The input edge's kernel gives the codes of :func:`minquant.quant.quantize`, bit for bit.

The oracle is :func:`minquant.quant.quantize` (itself checked against ``torch.quantize_per_tensor``
and frozen golden vectors in tests/test_quant.py), on ties, extremes and float32 overflow.
"""

import numpy as np
import pytest

from minquant.kernels.quantize import fma_f32, quantize_per_tensor_int8
from minquant.quant import quantize


def test_quantize_kernel_equals_quant_quantize():
    rng = np.random.default_rng(1)
    for _ in range(10):
        scale, zero_point = float(rng.uniform(1e-3, 1.0)), int(rng.integers(-128, 128))
        x = rng.normal(0.0, 100 * scale, 20_000).astype(np.float32)  # (20000,)
        ties = rng.integers(-200, 200, 2_000) + 0.5  # x / s + z lands halfway
        x[:2_000] = (ties * np.float32(scale)).astype(np.float32)
        x[2_000:2_010] = [3e38, -3e38, 0.0, -0.0, 1e-45, -1e-45, 5e-39, 1.0, -1.0, 1e30]
        expected = quantize(x, scale, zero_point, -128, 127)
        np.testing.assert_array_equal(
            quantize_per_tensor_int8(x, scale, zero_point, -128, 127), expected
        )
    with pytest.raises(ValueError, match="finite"):
        quantize_per_tensor_int8(np.array([1.0, np.inf]), 1.0, 0, -128, 127)


def test_fma_is_rounded_once():
    a = np.float32(1 + 2**-12)
    assert fma_f32(a, a, np.float32(-1.0)) == np.float32(2**-11 + 2**-24)


def test_runs_with_jit_disabled(run_without_jit):
    run_without_jit(
        """
        import numpy as np
        from minquant.kernels.quantize import quantize_per_tensor_int8
        from minquant.qnn import QParams, QuantizedConv2d, layers
        from minquant.quant import quantize
        x = np.array([-1.0, 0.0, 0.25, 0.26, 3.0, 1e30], np.float32)
        got = quantize_per_tensor_int8(x, 0.5, -2, -128, 127)
        assert (got == quantize(x, 0.5, -2, -128, 127)).all()
        qp = QParams(1.0, 0, -128, 127)
        assert layers.int8_path(qp) == ("plain", None)
        conv = QuantizedConv2d(np.ones((1, 1, 2, 2), np.int8), np.float32([1.0]), None, qp, qp)
        assert conv.packed is None
        assert conv(np.arange(9, dtype=np.int8).reshape(1, 1, 3, 3))[0, 0].tolist() == [
            [8, 12], [20, 24]
        ]
        print("ok")
        """
    )
