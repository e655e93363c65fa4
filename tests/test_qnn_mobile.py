"""Integer engine of mobile_cnn: depthwise int8 convolution, fused ReLU6, global pooling.

* the Numba depthwise kernel equals its NumPy reference and the float convolution exactly;
* ReLU6 / ClippedReLU clamp at the code of the upper bound (PyTorch's quantize_val rounding);
* global average pooling matches PyTorch's quantized ``adaptive_avg_pool2d`` bit for bit
  (``requant="float"``) and TFLite's integer Mean formula (``"fixedpoint"``), and its
  fake-quant twin gives the same code for the same input codes, exact ties included;
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
from minquant.ptq import Step, convert_group, quantize_model
from minquant.qnn import (
    QParams,
    QuantizedDepthwiseConv2d,
    QuantizedGlobalAvgPool2d,
    QuantizedModel,
    SimulatedGlobalAvgPool2d,
)
from minquant.qnn.model import QuantConfig
from minquant.quant import fake_quantize

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


@pytest.mark.parametrize(("requant", "bound_code"), [("fixedpoint", 3), ("float", 2)])
def test_simulation_clamps_at_the_integer_code_of_a_tied_bound(requant, bound_code):
    # u / s = 1.25 / 0.5 = 2.5: TFLite rounds the bound's code half away from zero (3),
    # PyTorch and a fake-quantized float clamp half to even (2).
    linear = nn.Linear(1, 2)
    linear.weight = nn.Parameter(np.float32([[1.0], [1.0]]))
    linear.bias = nn.Parameter(np.float32([0.0, 0.0]))
    act = nn.ClippedReLU(np.float32([1.25, 0.75]))
    x_qp = QParams(scale=1 / 64, zero_point=-128, qmin=-128, qmax=127)
    y_qp = QParams(scale=0.5, zero_point=-128, qmin=-128, qmax=127)
    w_info = (np.int8([[64], [64]]), np.float32([1 / 64]))
    module, sim = convert_group([linear, act], x_qp, y_qp, w_info, requant)
    step = Step(float_layers=[linear, act], module=module, sim_layer=sim, qparams=y_qp)
    config = QuantConfig(8, 8, per_channel=False, observer="minmax", requant=requant)
    qmodel = QuantizedModel([step], x_qp, nn.Sequential(linear, act), config)
    X = np.linspace(0.0, 3.9, 50, dtype=np.float32)[:, None]  # (50, 1)
    assert qmodel.forward_int(X)[:, 0].max() == y_qp.zero_point + bound_code
    np.testing.assert_array_equal(qmodel.simulate(X), qmodel(X))
    assert [row["mismatches"] for row in qmodel.code_mismatches(X)] == [0]


def _codes_with_ties(rng, qp, shape):
    """Random int8 codes in [qmin, qmax]; in half the channels, sum(q - z) is n k + n / 2."""
    x_q = rng.integers(qp.qmin, qp.qmax + 1, size=shape).astype(np.int64)  # (N, C, H, W)
    n = shape[2] * shape[3]
    if n % 2:
        return x_q.astype(np.int8)  # an odd n has no ties
    for idx in np.ndindex(shape[0], shape[1] // 2):
        window = x_q[idx]  # (H, W) view
        excess = (window - qp.zero_point).sum() % n - n // 2  # distance to a tie, mod n
        for pos in np.ndindex(window.shape):  # move codes down (or up) until it is a tie
            step = int(np.clip(excess, window[pos] - qp.qmax, window[pos] - qp.qmin))
            window[pos] -= step
            excess -= step
    return x_q.astype(np.int8)


def _dequantize(x_q, qp):
    """The values QuantizedModel.simulate holds for the codes x_q: s (q - z) in float32."""
    x_hat = (x_q.astype(np.float32) - np.float32(qp.zero_point)) * np.float32(qp.scale)
    np.testing.assert_array_equal(
        fake_quantize(x_hat, qp.scale, qp.zero_point, qp.qmin, qp.qmax), x_hat
    )  # already on the grid
    return x_hat


@given(
    hw=st.sampled_from([(4, 4), (7, 7), (6, 6), (2, 3), (14, 14), (1, 1)]),
    requant=st.sampled_from(["fixedpoint", "float"]),
    scale=st.floats(1e-4, 10.0),
    zero_point=st.integers(-128, 127),
    seed=st.integers(0, 2**16),
)
def test_simulated_pool_equals_integer_pool_code_for_code(hw, requant, scale, zero_point, seed):
    rng = np.random.default_rng(seed)
    qp = QParams(scale=scale, zero_point=zero_point, qmin=-128, qmax=127)
    x_q = _codes_with_ties(rng, qp, (3, 8, *hw))
    x_hat = _dequantize(x_q, qp)
    y_int = QuantizedGlobalAvgPool2d(qp, requant)(x_q)  # (3, 8) int8
    y_sim = SimulatedGlobalAvgPool2d(qp, requant)(x_hat)  # (3, 8) float32
    expected = (y_int.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    np.testing.assert_array_equal(y_sim, expected)  # the same code, the same float value


@pytest.mark.parametrize("requant", ["fixedpoint", "float"])
def test_plain_float_mean_misses_ties_the_twin_does_not(requant):
    # An odd zero point: half to even on the signed mean and on the unsigned mean differ.
    qp = QParams(scale=0.0373, zero_point=-101, qmin=-128, qmax=127)
    rng = np.random.default_rng(3)
    x_q = _codes_with_ties(rng, qp, (50, 16, 4, 4))
    n = 16
    ties = (x_q.astype(np.int64) - qp.zero_point).sum(axis=(2, 3)) % n == n // 2  # (50, 16)
    assert ties[:, :8].all()  # and, by chance, about 1 in 16 of the others
    x_hat = _dequantize(x_q, qp)
    y_int = QuantizedGlobalAvgPool2d(qp, requant)(x_q)
    mean = x_hat.mean(axis=(2, 3))  # (50, 16) float32
    naive = fake_quantize(mean, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
    naive_codes = np.rint(naive / np.float32(qp.scale)).astype(np.int64) + qp.zero_point
    assert np.count_nonzero(naive_codes[ties] != y_int[ties]) >= 100  # 165 and 345 of 421
    y_sim = SimulatedGlobalAvgPool2d(qp, requant)(x_hat)
    sim_codes = np.rint(y_sim / np.float32(qp.scale)).astype(np.int64) + qp.zero_point
    np.testing.assert_array_equal(sim_codes, y_int)


def test_simulated_pool_errors():
    with pytest.raises(ValueError, match="requant"):
        SimulatedGlobalAvgPool2d(QP, "round")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        SimulatedGlobalAvgPool2d(QP)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="pixels"):
        SimulatedGlobalAvgPool2d(QP)(np.zeros((1, 1, 200, 200), np.float32))


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
    rows = qmodel.code_mismatches(X_test[:200])
    pool = rows[kinds.index("QuantizedGlobalAvgPool2d")]
    assert pool["mismatches"] == 0 and pool["total"] == 200 * 64
    # Convolutions: only float32 noise at near-ties, a few codes per million.
    assert sum(r["mismatches"] for r in rows) <= 1e-5 * sum(r["total"] for r in rows)


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
