"""QuantizedModel: sizes (int8 in memory vs bit-packed), repr and the per-layer report."""

import math
from functools import cache

from minquant import models
from minquant.data import load_mnist
from minquant.ptq import fold_batchnorm, quantize_model
from minquant.qnn.model import QuantizedModel


@cache
def _quantized(weight_bits=8, rounding="single"):
    X_train, _ = load_mnist("train")
    model = models.load_pretrained("small_cnn")
    return model, quantize_model(model, X_train[:500], weight_bits=weight_bits, rounding=rounding)


def _weight_counts(model):
    """Number of weights of every Conv2d/Linear of the folded float model."""
    return [p.data.size for p in fold_batchnorm(model).parameters() if p.data.ndim > 1]


def test_sizes_of_w8_w4_w2():
    model, q8 = _quantized(8)
    counts = _weight_counts(model)  # one int8 byte per code in every model's forward pass
    other = q8.nbytes - sum(counts)  # int32 bias and multiplier, int8 shift per channel
    channels = sum(p.data.size for p in fold_batchnorm(model).parameters() if p.data.ndim == 1)
    assert other == channels * (4 + 4 + 1)
    assert q8.packed_nbytes == q8.nbytes
    for bits in (4, 2):
        _, qmodel = _quantized(bits)
        assert qmodel.nbytes == q8.nbytes
        packed = sum(math.ceil(n * bits / 8) for n in counts) + other
        assert qmodel.packed_nbytes == packed
    assert isinstance(q8, QuantizedModel)


def test_repr_shows_both_sizes_and_rounding():
    _, q4 = _quantized(4)
    text = repr(q4)
    assert text.startswith("QuantizedModel(W4A8,")
    assert f"nbytes={q4.nbytes:,}" in text and f"packed_nbytes={q4.packed_nbytes:,}" in text
    assert "requant='fixedpoint', rounding='single'" in text and "QuantizedConv2d" in text
    _, q_double = _quantized(8, "double")
    assert "rounding='double'" in repr(q_double)


def test_layer_report():
    X_test, _ = load_mnist("test")
    _, qmodel = _quantized()
    report = qmodel.layer_report(X_test[:200])
    assert len(report) == len(qmodel.steps) + 1
    assert report[1]["layer"].startswith("QuantizedConv2d")
    assert report[0]["sqnr_db"] > 60.0  # pixels k / 255 on a grid of step 1 / 255: lossless
    for row in report[1:]:
        assert 25.0 < row["sqnr_db"] < 80.0, row  # 8 bits: about 6 dB per bit, minus losses
        assert abs(row["sqnr_db"] - row["sim_sqnr_db"]) < 0.5, row
