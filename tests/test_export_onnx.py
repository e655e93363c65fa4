"""ONNX export: onnx.checker, then ONNX Runtime (CPU) against minquant's integer forward."""

import sys
from functools import cache

import numpy as np
import pytest

from minquant import models, nn
from minquant.data import load_mnist
from minquant.export import to_onnx
from minquant.ptq import quantize_model
from minquant.qnn import QParams, QuantizedLinear, QuantizedModel, Step
from minquant.qnn.model import QuantConfig

onnx = pytest.importorskip("onnx", reason="the onnx package (dev extra) builds the graphs")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime (dev extra) is the oracle")


@cache
def _qmodel(requant="float", per_channel=True, weight_bits=8, rounding="single"):
    X_train, _ = load_mnist("train")
    model = models.load_pretrained("small_cnn")
    return quantize_model(
        model, X_train[:1000], weight_bits, 8, per_channel, requant=requant, rounding=rounding
    )


def _session(proto, extra_outputs=()):
    """An ONNX Runtime CPU session on ``proto``, with intermediate tensors as outputs."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for name in extra_outputs:
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT8, None)
        )
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _minquant_steps(qmodel, X):
    """minquant's int8 codes after the input quantizer and after every step."""
    x_q = qmodel.quantize(X)
    codes = {"input_q": x_q}
    for i, step in enumerate(qmodel.steps):
        x_q = step.module(x_q)
        codes[f"step{i}_q"] = x_q
    return codes


@pytest.mark.parametrize(
    "per_channel, weight_bits", [(True, 8), (False, 8), (True, 4)], ids=["pc8", "pt8", "pc4"]
)
def test_integer_form_with_float_requant_is_bit_identical_at_every_layer(
    tmp_path, per_channel, weight_bits
):
    qmodel = _qmodel("float", per_channel, weight_bits)
    X, _ = load_mnist("test")  # all 1,000 test digits
    proto = to_onnx(qmodel, tmp_path / "m.onnx", form="integer")
    expected = _minquant_steps(qmodel, X)
    names = [name for name in expected if name != f"step{len(qmodel.steps) - 1}_q"]
    session = _session(proto, names)
    got = dict(zip(["logits", "logits_q", *names], session.run(None, {"X": X}), strict=True))
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    np.testing.assert_array_equal(got["logits_q"], qmodel.forward_int(X))
    np.testing.assert_array_equal(got["logits"], qmodel(X))


@pytest.mark.parametrize("rounding", ["single", "double"])
def test_integer_form_with_fixed_point_within_one_code(tmp_path, rounding):
    qmodel = _qmodel("fixedpoint", True, 8, rounding)
    X, _ = load_mnist("test")
    proto = to_onnx(qmodel, tmp_path / "m.onnx", form="integer")
    logits_q = _session(proto).run(["logits_q"], {"X": X})[0]
    expected = qmodel.forward_int(X)
    diff = np.abs(logits_q.astype(np.int16) - expected)
    assert diff.max() <= 1
    assert np.mean(logits_q.argmax(1) == expected.argmax(1)) >= 0.995
    # Measured (docs/numerics.md): every logit code identical with TFLite's single rounding
    # (the float64 product is rounded once, as the integers; ties never occur here).
    if rounding == "single":
        assert np.mean(diff == 0) >= 0.999


@pytest.mark.parametrize("requant", ["float", "fixedpoint"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["pc", "pt"])
def test_qdq_form_within_one_code(tmp_path, requant, per_channel):
    qmodel = _qmodel(requant, per_channel, 8)
    X, _ = load_mnist("test")
    proto = to_onnx(qmodel, tmp_path / "m.onnx", form="qdq")
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "Relu", "MaxPool"} <= ops
    logits_u8 = _session(proto).run(["logits_q"], {"X": X})[0]
    assert logits_u8.dtype == np.uint8  # ONNX Runtime's U8S8: the int8 codes + 128
    logits_q = (logits_u8.astype(np.int16) - 128).astype(np.int8)
    expected = qmodel.forward_int(X)
    assert np.abs(logits_q.astype(np.int16) - expected).max() <= 1
    assert np.mean(logits_q.argmax(1) == expected.argmax(1)) >= 0.995
    # Measured: 98.9% to 100% of the logit codes identical (docs/numerics.md).
    assert np.mean(logits_q == expected) >= 0.98


def _tie_model():
    """One Linear layer whose real output 1 * 0.5 = 0.5 is exactly a tie."""
    qp = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)
    w_q = np.array([[1], [3]], dtype=np.int8)  # outputs x * 0.5 and x * 1.5
    module = QuantizedLinear(w_q, np.float32([0.5]), None, qp, qp)
    layer = nn.Linear(1, 2, bias=False, rng=np.random.default_rng(0))
    config = QuantConfig(weight_bits=8, act_bits=8, per_channel=False, observer="minmax")
    return QuantizedModel([Step([layer], module, layer, qp)], qp, nn.Sequential(layer), config)


def test_ties_round_up_in_minquant_and_half_even_in_onnx(tmp_path):
    # TFLite's single rounding is floor(x M + 1/2): ties toward +inf; ONNX Round: to even.
    qmodel = _tie_model()
    X = np.array([[1.0], [3.0], [-1.0]], dtype=np.float32)  # reals 0.5 1.5 / 1.5 4.5 / -0.5 -1.5
    proto = to_onnx(qmodel, tmp_path / "tie.onnx", form="integer")
    logits_q = _session(proto).run(["logits_q"], {"X": X})[0]
    np.testing.assert_array_equal(qmodel.forward_int(X), [[1, 2], [2, 5], [0, -1]])
    np.testing.assert_array_equal(logits_q, [[0, 2], [2, 4], [0, -2]])  # ties to even


def test_float_form_is_the_float_model(tmp_path):
    qmodel = _qmodel()
    X, _ = load_mnist("test")
    proto = to_onnx(qmodel, tmp_path / "f.onnx", form="float")
    assert {node.op_type for node in proto.graph.node} == {
        "Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Identity"
    }  # fmt: skip
    logits = _session(proto).run(["logits"], {"X": X})[0]
    np.testing.assert_allclose(logits, qmodel.float_model(X), rtol=1e-4, atol=1e-4)


def test_checker_and_bad_arguments(tmp_path):
    qmodel = _qmodel()
    for form in ("integer", "qdq", "float"):
        path = tmp_path / f"{form}.model"  # written exactly there
        to_onnx(qmodel, path, form=form)
        onnx.checker.check_model(onnx.load(path), full_check=True)
    with pytest.raises(
        ValueError, match=r"form must be one of \('qdq', 'integer', 'float'\), got 'int8'"
    ):
        to_onnx(qmodel, tmp_path / "x.onnx", form="int8")
    with pytest.raises(TypeError, match="qmodel must be a QuantizedModel, got Sequential"):
        to_onnx(qmodel.float_model, tmp_path / "x.onnx")


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    # NOTE: a None entry in sys.modules makes `import onnx` raise ImportError.
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'minquant\[dev\]'"):
        to_onnx(_qmodel(), tmp_path / "x.onnx")
