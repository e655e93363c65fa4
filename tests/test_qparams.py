"""The edges of an integer-only model: QParams, Quantize and Dequantize, and the base class."""

import numpy as np
import pytest

from minquant import qnn
from minquant.qnn.qparams import Dequantize, QParams, Quantize, QuantizedModule


def test_edges():
    qp = QParams(scale=0.1, zero_point=-3, qmin=-128, qmax=127)
    x = np.array([[-1.0, 0.0, 0.26, 100.0]], dtype=np.float32)
    x_q = Quantize(qp)(x)
    assert x_q.dtype == np.int8 and x_q.tolist() == [[-13, -3, -0, 127]]
    np.testing.assert_allclose(Dequantize(qp)(x_q), [[-1.0, 0.0, 0.3, 13.0]], rtol=1e-6)


def test_base_module_stores_nothing_and_has_no_forward():
    module = QuantizedModule()
    assert module.nbytes == 0 and module.packed_nbytes(4) == 0
    assert repr(module) == "QuantizedModule()"
    with pytest.raises(NotImplementedError, match="QuantizedModule does not implement forward"):
        module(np.zeros((1, 2), np.int8))


def test_qnn_reexports_the_same_classes():
    for name in ("QParams", "QuantizedModule", "Quantize", "Dequantize"):
        assert getattr(qnn, name) is globals()[name]


def test_bad_qparams():
    with pytest.raises(ValueError, match="zero_point"):
        QParams(scale=0.1, zero_point=200, qmin=-128, qmax=127)
    with pytest.raises(ValueError, match="scale"):
        QParams(scale=0.0, zero_point=0, qmin=-128, qmax=127)
