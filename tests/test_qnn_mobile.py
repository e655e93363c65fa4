"""Integer engine of mobile_cnn: depthwise int8 convolution, fused ReLU6, global pooling.

* the Numba depthwise kernel equals its NumPy reference and the float convolution exactly;
* ReLU6 / ClippedReLU clamp at the code of the upper bound (PyTorch's quantize_val rounding);
* global average pooling matches PyTorch's quantized ``adaptive_avg_pool2d`` bit for bit
  (``requant="float"``) and TFLite's integer Mean formula (``"fixedpoint"``);
* ``quantize_model(mobile_cnn)``: integer vs simulation argmax >= 99.9% at W8A8, and the
  ``requant="float"`` model is bit-identical to its ``torch.ao`` fbgemm twin.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minquant import nn
from minquant.data import load_mnist
from minquant.kernels.depthwise import depthwise_conv2d_int8, depthwise_conv2d_int8_ref
from minquant.models import load_pretrained
from minquant.ptq import quantize_model
from minquant.qnn import QParams, QuantizedDepthwiseConv2d, QuantizedGlobalAvgPool2d

pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning")

QP = QParams(scale=1.0, zero_point=0, qmin=-128, qmax=127)


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 5),
    hw=st.integers(1, 7),
    k=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    pad_value=st.integers(-128, 127),
    seed=st.integers(0, 2**16),
)
def test_depthwise_kernel_equals_reference(n, c, hw, k, stride, padding, pad_value, seed):
    if hw + 2 * padding < k:
        return
    rng = np.random.default_rng(seed)
    x_q = rng.integers(-128, 128, size=(n, c, hw, hw), dtype=np.int8)
    w_q = rng.integers(-127, 128, size=(c, 1, k, k), dtype=np.int8)
    got = depthwise_conv2d_int8(x_q, w_q, stride, padding, pad_value)
    ref = depthwise_conv2d_int8_ref(x_q, w_q, stride, padding, pad_value)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


def test_depthwise_reference_equals_float_grouped_conv():
    rng = np.random.default_rng(0)
    x_q = rng.integers(-128, 128, size=(2, 4, 6, 6), dtype=np.int8)
    w_q = rng.integers(-127, 128, size=(4, 1, 3, 3), dtype=np.int8)
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
    conv.weight = nn.Parameter(w_q.astype(np.float64))
    # NOTE: padding with 0 is the float convolution's zero padding; float64 sums are exact.
    expected = conv(x_q.astype(np.float64)).transpose(0, 2, 3, 1)  # (N, Ho, Wo, C)
    np.testing.assert_array_equal(depthwise_conv2d_int8_ref(x_q, w_q, 2, 1, 0), expected)


def test_depthwise_errors():
    x_q = np.zeros((1, 2, 4, 4), np.int8)
    with pytest.raises(ValueError, match=r"\(C, 1, k, k\)"):
        depthwise_conv2d_int8(x_q, np.zeros((3, 1, 3, 3), np.int8))
    with pytest.raises(TypeError, match="int8"):
        depthwise_conv2d_int8(x_q.astype(np.int16), np.zeros((2, 1, 3, 3), np.int8))
    with pytest.raises(ValueError, match=r"\(C, 1, k, k\)"):
        QuantizedDepthwiseConv2d(np.zeros((2, 2, 3, 3), np.int8), np.float32([1.0]), None, QP, QP)


@pytest.mark.parametrize("requant", ["float", "fixedpoint"])
def test_relu6_clamps_at_the_code_of_six(requant):
    out_qp = QParams(scale=0.05, zero_point=-128, qmin=-128, qmax=127)  # 6.0 is code -8
    w_q = np.full((1, 1, 1, 1), 127, np.int8)
    x_q = np.arange(-128, 128, dtype=np.int8).reshape(1, 1, 16, 16)
    layer = QuantizedDepthwiseConv2d(
        w_q, np.float32([0.01]), None, QP, out_qp, relu=True, requant=requant, upper=6.0
    )
    y = layer(x_q)
    assert y.min() == -128 and y.max() == -128 + 120
    per_channel = QuantizedDepthwiseConv2d(
        np.full((2, 1, 1, 1), 127, np.int8), np.float32([0.01]), None, QP, out_qp,
        relu=True, requant=requant, upper=np.float32([6.0, 1.0]),
    )  # fmt: skip
    y2 = per_channel(np.concatenate([x_q, x_q], axis=1))
    assert y2[0, 0].max() == -8 and y2[0, 1].max() == -128 + 20


@pytest.mark.parametrize("hw", [(4, 4), (7, 7), (14, 14), (6, 6), (2, 3)])
def test_global_avg_pool_fixedpoint_is_tflite_mean(hw):
    rng = np.random.default_rng(1)
    qp = QParams(scale=0.02, zero_point=-37, qmin=-128, qmax=127)
    x_q = rng.integers(-128, 128, size=(50, 8, *hw), dtype=np.int8)
    n = hw[0] * hw[1]
    acc = x_q.astype(np.int64).sum(axis=(2, 3)) - n * qp.zero_point
    # TFLite reference_integer_ops::Mean with M = 1: (acc +- n/2) / n, C truncation.
    expected = [int((a + n // 2) / n) if a > 0 else -int((-a + n // 2) / n) for a in acc.ravel()]
    expected = np.clip(np.array(expected).reshape(acc.shape) + qp.zero_point, -128, 127)
    np.testing.assert_array_equal(QuantizedGlobalAvgPool2d(qp)(x_q), expected)


@pytest.mark.torch
@pytest.mark.parametrize("hw", [(4, 4), (7, 7), (14, 14), (6, 6), (10, 10), (2, 3)])
def test_global_avg_pool_float_matches_torch(hw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    qp = QParams(scale=0.05, zero_point=-91, qmin=-128, qmax=127)
    x_q = rng.integers(-128, 128, size=(200, 16, *hw), dtype=np.int8)
    u = torch.from_numpy((x_q.astype(np.int16) + 128).astype(np.uint8))
    t = torch._make_per_tensor_quantized_tensor(u, qp.scale, qp.zero_point + 128)
    y_t = torch.nn.functional.adaptive_avg_pool2d(t, 1).int_repr().numpy().astype(int) - 128
    got = QuantizedGlobalAvgPool2d(qp, "float")(x_q)
    np.testing.assert_array_equal(got, y_t[:, :, 0, 0])


@pytest.fixture(scope="module")
def mobile():
    X_train, _ = load_mnist("train")
    X_test, y_test = load_mnist("test")
    return load_pretrained("mobile_cnn"), X_train[:1000], X_test, y_test


@pytest.mark.parametrize("requant", ["fixedpoint", "float"])
def test_mobile_cnn_w8a8_integer_agrees_with_simulation(mobile, requant):
    model, X_calib, X_test, y_test = mobile
    qmodel = quantize_model(model, X_calib, requant=requant)
    kinds = [type(step.module).__name__ for step in qmodel.steps]
    assert kinds.count("QuantizedDepthwiseConv2d") == 3
    assert "QuantizedGlobalAvgPool2d" in kinds
    pred, sim = qmodel(X_test).argmax(1), qmodel.simulate(X_test).argmax(1)
    assert np.mean(pred == sim) >= 0.999
    assert np.mean(pred == y_test) >= 0.95


@pytest.mark.torch
@pytest.mark.parametrize("per_channel", [True, False])
def test_mobile_cnn_bit_exact_with_torch_fbgemm(mobile, per_channel):
    torch = pytest.importorskip("torch")
    from minquant import torch_bridge

    model, X_calib, X_test, _ = mobile
    qmodel = quantize_model(model, X_calib, per_channel=per_channel, requant="float")
    torch_model = torch_bridge.to_torch_quantized(qmodel, engine="fbgemm")
    with torch.no_grad():
        codes = torch_model[:-1](torch.from_numpy(X_test)).int_repr().numpy().astype(int)
    np.testing.assert_array_equal(codes - 128, qmodel.forward_int(X_test))


@pytest.mark.torch
def test_relu6_step_bit_exact_with_torch(mobile):
    """A narrow output range makes the ReLU6 clamp bind: torch's relu6 gives the same codes."""
    torch = pytest.importorskip("torch")
    from minquant import torch_bridge

    model, X_calib, X_test, _ = mobile
    qmodel = quantize_model(model, X_calib, requant="float")
    step = qmodel.steps[1]  # depthwise conv + ReLU6
    old = step.module
    # Rebuild the depthwise step with an output scale where 6.0 is code -32 (clamp binds);
    # NOTE: a float32-exact scale, as observers produce (torch keeps scales in float64).
    out_qp = QParams(scale=0.0625, zero_point=-128, qmin=-128, qmax=127)
    new = QuantizedDepthwiseConv2d(
        old.w_q, old.w_scale, old.requant.bias, old.input_qparams, out_qp, old.stride,
        old.padding, True, "float", upper=6.0,
    )  # fmt: skip
    x_q = qmodel.quantize(X_test[:200])
    x_q = qmodel.steps[0].module(x_q)
    y = new(x_q)
    assert y.max() == -128 + 96
    tmodel = torch_bridge._step_to_torch(new)
    u = torch.from_numpy((x_q.astype(np.int16) + 128).astype(np.uint8))
    t = torch._make_per_tensor_quantized_tensor(
        u, old.input_qparams.scale, old.input_qparams.zero_point + 128
    )
    with torch.no_grad():
        y_t = tmodel(t).int_repr().numpy().astype(int) - 128
    np.testing.assert_array_equal(y, y_t)


def test_weight_codes_feed_the_integer_model(mobile):
    """Codes given for a layer replace round-to-nearest there, and only there."""
    from minquant.ptq import fold_batchnorm

    model, X_calib, _, _ = mobile
    folded = fold_batchnorm(model)
    rtn = quantize_model(folded, X_calib[:200], weight_bits=4, per_channel=False)
    index = 2  # folded: Conv2d, ReLU6, then the first depthwise Conv2d
    codes = rtn.steps[1].module.w_q.copy()
    codes[0, 0, 0, 0] = 7 if codes[0, 0, 0, 0] != 7 else 6
    chosen = quantize_model(
        folded, X_calib[:200], weight_bits=4, per_channel=False, weight_codes={index: codes}
    )
    np.testing.assert_array_equal(chosen.steps[1].module.w_q, codes)
    np.testing.assert_array_equal(chosen.steps[2].module.w_t, rtn.steps[2].module.w_t)
    with pytest.raises(ValueError, match="shape"):
        quantize_model(folded, X_calib[:50], weight_codes={index: codes[:2]})
    with pytest.raises(ValueError, match=r"\[-7, 7\]"):
        quantize_model(folded, X_calib[:50], weight_bits=4, weight_codes={index: codes * 2})


def _golden():
    from pathlib import Path

    return np.load(Path(__file__).parent / "fixtures" / "mobile_golden.npz")


@pytest.mark.parametrize("i", range(3))
def test_depthwise_matches_torch_golden(i):
    """Frozen fbgemm outputs (tests/fixtures/make_golden_mobile.py, torch 2.13)."""
    g = _golden()
    s_in, z_in, s_out, z_out = g[f"dw_qp{i}"]
    stride, padding, relu6 = (int(v) for v in g[f"dw_sp{i}"])
    x_qp = QParams(float(s_in), int(z_in), -128, 127)
    y_qp = QParams(float(s_out), int(z_out), -128, 127)
    layer = QuantizedDepthwiseConv2d(
        g[f"dw_w{i}"], g[f"dw_ws{i}"], g[f"dw_b{i}"], x_qp, y_qp, stride, padding,
        relu=bool(relu6), requant="float", upper=6.0 if relu6 else None,
    )  # fmt: skip
    np.testing.assert_array_equal(layer(g[f"dw_x{i}"]), g[f"dw_y{i}"])


@pytest.mark.parametrize("j", range(3))
def test_global_avg_pool_matches_torch_golden(j):
    g = _golden()
    scale, z = g[f"gap_qp{j}"]
    pool = QuantizedGlobalAvgPool2d(QParams(float(scale), int(z), -128, 127), "float")
    np.testing.assert_array_equal(pool(g[f"gap_x{j}"]), g[f"gap_y{j}"])
