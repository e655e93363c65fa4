"""torch_bridge: minquant and PyTorch compute the same numbers (PyTorch is the oracle).

* float models: ``to_torch(model)`` matches minquant's forward pass to 1e-5;
* integer models: a ``requant="float"`` QuantizedModel and its ``torch.ao`` x86 twin give
  bit-identical int8 logits on the whole MNIST test split, and layer by layer (fed the same
  int8 input) the same codes wherever minquant's output range allows them;
* fake quantization: every fake quantizer of a QAT model and its
  ``torch.ao.quantization.FakeQuantize`` twin agree bit for bit on the same input.
"""

import sys

import numpy as np
import pytest

from minquant import nn, qat, torch_bridge
from minquant.data import load_mnist
from minquant.fake_quant import FakeQuantize
from minquant.models import load_pretrained, small_cnn
from minquant.ptq import quantize_model
from minquant.qat import QATConvBn2d, QATLinear

# NOTE: torch 2.13 warns that quantized tensors are deprecated; they are the oracle here.
pytestmark = pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch (the oracle) is not installed")


@pytest.fixture(scope="module")
def mnist():
    X_train, _ = load_mnist("train")
    X_test, y_test = load_mnist("test")
    return X_train[:1000], X_test, y_test


@pytest.fixture(scope="module")
def model():
    return load_pretrained("small_cnn")


def _as_numpy(torch, module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


# --- float models ---------------------------------------------------------------------------


@pytest.mark.torch
def test_to_torch_matches_float_forward(torch, model, mnist):
    _, X_test, _ = mnist
    torch_model = torch_bridge.to_torch(model)
    assert not torch_model.training
    logits = _as_numpy(torch, torch_model, X_test)  # (1000, 10)
    np.testing.assert_allclose(logits, model(X_test), rtol=1e-5, atol=1e-5)


@pytest.mark.torch
def test_to_torch_batchnorm_training_mode(torch, mnist):
    """In training mode both normalise with batch statistics and update the same buffers."""
    _, X_test, _ = mnist
    model = small_cnn(rng=np.random.default_rng(0)).train()
    torch_model = torch_bridge.to_torch(model)
    assert torch_model.training
    np.testing.assert_allclose(
        _as_numpy(torch, torch_model, X_test[:64]), model(X_test[:64]), rtol=0, atol=1e-5
    )
    for bn, torch_bn in ((model[1], torch_model[1]), (model[5], torch_model[5])):
        np.testing.assert_allclose(bn.running_var, torch_bn.running_var.numpy(), rtol=1e-6)
        np.testing.assert_allclose(bn.running_mean, torch_bn.running_mean.numpy(), atol=1e-7)


@pytest.mark.torch
def test_from_torch_round_trip_and_torch_init(torch, model, mnist):
    _, X_test, _ = mnist
    back = torch_bridge.from_torch(torch_bridge.to_torch(model))
    assert not back.training
    state, state_back = model.state_dict(), back.state_dict()
    assert state.keys() == state_back.keys()
    for key in state:
        np.testing.assert_array_equal(state_back[key], state[key])
    # A model made (and initialised) by PyTorch.
    torch.manual_seed(0)
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, stride=2, padding=2),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, stride=2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 10, bias=False),
    ).eval()
    ours = torch_bridge.from_torch(torch_model)
    np.testing.assert_allclose(
        ours(X_test[:100]), _as_numpy(torch, torch_model, X_test[:100]), rtol=0, atol=1e-5
    )


@pytest.mark.torch
def test_from_torch_rejects_unsupported(torch):
    with pytest.raises(ValueError, match="Tanh"):
        torch_bridge.from_torch(torch.nn.Sequential(torch.nn.Tanh()))
    with pytest.raises(ValueError, match="square kernel"):
        torch_bridge.from_torch(torch.nn.Conv2d(1, 2, 3, dilation=2))
    with pytest.raises(ValueError, match="square kernel"):
        torch_bridge.from_torch(torch.nn.Conv2d(1, 2, (3, 5)))
    with pytest.raises(ValueError, match="ceil"):
        torch_bridge.from_torch(torch.nn.MaxPool2d(2, ceil_mode=True))
    with pytest.raises(ValueError, match=r"Flatten\(\)"):
        torch_bridge.from_torch(torch.nn.Flatten(start_dim=0))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module, got ndarray"):
        torch_bridge.from_torch(np.zeros(3))


@pytest.mark.torch
def test_to_torch_rejects_unsupported(torch):
    fq_model = nn.Sequential(FakeQuantize())
    with pytest.raises(ValueError, match="unsupported layer FakeQuantize"):
        torch_bridge.to_torch(fq_model)


def test_missing_torch_names_the_extra(monkeypatch):
    # NOTE: a None entry in sys.modules makes `import torch` raise ImportError.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "minquant\[torch\]"'):
        torch_bridge.to_torch(nn.Sequential(nn.ReLU()))


# --- the integer model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def qmodel(model, mnist):
    X_calib, _, _ = mnist
    return quantize_model(model, X_calib, requant="float")


def _to_quint8(torch, x_q: np.ndarray, scale: float, zero_point: int):
    """minquant int8 codes as the torch quint8 tensor with the same real values."""
    codes = torch.from_numpy((x_q.astype(np.int16) + 128).astype(np.uint8))
    return torch._make_per_tensor_quantized_tensor(codes, scale, zero_point + 128)


def _int8_codes(q_tensor) -> np.ndarray:
    return q_tensor.int_repr().numpy().astype(np.int16) - 128


def _x86_convs_run_on_fbgemm() -> bool:
    """PyTorch's x86 engine sends convolutions to oneDNN on Linux CPUs with AVX512-VNNI
    (``should_use_onednn_quant``) and to fbgemm elsewhere; minquant reproduces fbgemm."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "avx512_vnni" not in f.read()
    except OSError:
        return not sys.platform.startswith("linux")


@pytest.fixture(params=["fbgemm", "x86"])
def engine(request):
    if request.param == "x86" and not _x86_convs_run_on_fbgemm():
        pytest.skip("x86 engine runs convolutions on oneDNN here (AVX512-VNNI), not fbgemm")
    return request.param


@pytest.mark.torch
def test_quantized_logits_bit_identical_on_mnist_test(torch, qmodel, mnist, engine):
    _, X_test, y_test = mnist
    torch_qmodel = torch_bridge.to_torch_quantized(qmodel, engine=engine)
    ours = qmodel.forward_int(X_test)  # (1000, 10) int8
    with torch.no_grad():
        theirs = _int8_codes(torch_qmodel[:-1](torch.from_numpy(X_test)))
    mismatches = int(np.count_nonzero(ours != theirs))
    assert mismatches == 0, f"{mismatches} of {ours.size} int8 logits differ"
    # The float logits (DeQuantize) are bit-identical too, hence the accuracy.
    logits = _as_numpy(torch, torch_qmodel, X_test)
    np.testing.assert_array_equal(logits, qmodel(X_test))
    assert (logits.argmax(1) == y_test).mean() == (qmodel(X_test).argmax(1) == y_test).mean()


def _layer_by_layer(torch, qmodel, torch_qmodel, X: np.ndarray) -> int:
    """Feed each torch layer minquant's int8 input and assert equal outputs.

    Returns how many output codes lie above the 7-bit range that ``reduce_range`` chose
    the scales for (quint8 codes > 127, int8 codes >= 0).
    """
    x_qp = qmodel.quantize.qparams
    x_q = qmodel.quantize(X)  # (N, 1, 28, 28) int8
    with torch.no_grad():
        np.testing.assert_array_equal(x_q, _int8_codes(torch_qmodel[0](torch.from_numpy(X))))
    beyond_7_bits = 0
    for step, torch_layer in zip(qmodel.steps, torch_qmodel[1:-1], strict=True):
        with torch.no_grad():
            out = torch_layer(_to_quint8(torch, x_q, x_qp.scale, x_qp.zero_point))
        y_q, y_qp = step.module(x_q), step.qparams
        assert out.q_scale() == np.float32(y_qp.scale)
        np.testing.assert_array_equal(y_q, _int8_codes(out), err_msg=repr(step.module))
        beyond_7_bits += int(np.count_nonzero(y_q >= 0))
        x_q, x_qp = y_q, y_qp
    return beyond_7_bits


@pytest.mark.torch
def test_quantized_layers_bit_identical_on_the_same_input(torch, qmodel, mnist, engine):
    _, X_test, _ = mnist
    torch_qmodel = torch_bridge.to_torch_quantized(qmodel, engine=engine)
    _layer_by_layer(torch, qmodel, torch_qmodel, X_test)


@pytest.mark.torch
def test_quantized_layers_agree_beyond_the_calibrated_range(torch, model, mnist):
    """Calibrated on 5 images only, test activations exceed the observed ranges and the
    7-bit range that reduce_range chose the scales for: both libraries still use (and clamp
    to) the full 8-bit storage range."""
    X_calib, X_test, _ = mnist
    qmodel = quantize_model(model, X_calib[:5], requant="float")
    torch_qmodel = torch_bridge.to_torch_quantized(qmodel, engine="fbgemm")
    assert _layer_by_layer(torch, qmodel, torch_qmodel, X_test[:200]) > 0


@pytest.mark.torch
def test_to_torch_quantized_rejects_other_models(torch, model, mnist):
    X_calib, _, _ = mnist
    fixed = quantize_model(model, X_calib[:100], requant="fixedpoint")
    with pytest.raises(ValueError, match=r"requant=.float.*got requant=.fixedpoint."):
        torch_bridge.to_torch_quantized(fixed)
    low_bits = quantize_model(model, X_calib[:100], act_bits=6, requant="float")
    with pytest.raises(ValueError, match="act_bits=8, got 6"):
        torch_bridge.to_torch_quantized(low_bits)
    float_model = quantize_model(model, X_calib[:100], requant="float")
    with pytest.raises(ValueError, match=r"engine must be one of .* got .tpu."):
        torch_bridge.to_torch_quantized(float_model, engine="tpu")


@pytest.mark.torch
def test_to_torch_quantized_restores_the_engine(torch, qmodel):
    before = torch.backends.quantized.engine
    torch_bridge.to_torch_quantized(qmodel, engine="fbgemm")
    assert torch.backends.quantized.engine == before


# --- fake quantization ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[8, 4], ids=["W8A8", "W4A4"])
def qat_model(request, model, mnist):
    X_calib, _, _ = mnist
    qat_model = qat.prepare_qat(model, weight_bits=request.param, act_bits=request.param)
    for start in range(0, 400, 200):  # observe two batches in training mode
        qat_model(X_calib[start : start + 200])
    return qat_model.eval()


@pytest.mark.torch
def test_fake_quantizers_bit_identical(torch, qat_model, mnist):
    """Stage by stage on the same input: every fake quantizer agrees bit for bit."""
    X_test = mnist[1][:250]
    torch_model = torch_bridge.to_torch_qat(qat_model)
    x = X_test
    for layer, torch_layer in zip(qat_model, torch_model, strict=True):
        y = layer(x)
        theirs = _as_numpy(torch, torch_layer, x)
        if isinstance(layer, (QATConvBn2d, QATLinear)):
            w_fold, _ = layer.folded_weight_bias()
            w_fq = layer.weight_fake_quant(w_fold)
            with torch.no_grad():
                torch_w_fq = torch_layer.weight_fake_quant(torch_layer.weight).numpy()
            np.testing.assert_array_equal(w_fq, torch_w_fq)
            # NOTE: float32 sums in a different order (im2col + BLAS vs PyTorch's conv), and
            # the order depends on the BLAS kernel and the PyTorch build: a bound relative to
            # the values (1e-5 is ~80 float32 ulps), not a fixed number of digits.
            np.testing.assert_allclose(y, theirs, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(y, theirs, err_msg=repr(layer))
        x = y


@pytest.mark.torch
def test_fake_quant_forward_end_to_end(torch, qat_model, mnist):
    """End to end, only the float32 summation order can move a value across a rounding
    boundary: at most a handful of logits, by exactly one quantization step."""
    _, X_test, _ = mnist
    ours = qat_model(X_test)  # (1000, 10) on the output quantizer's grid
    theirs = _as_numpy(torch, torch_bridge.to_torch_qat(qat_model), X_test)
    step = qat_model[-1].scale[0]
    diff = np.abs(ours - theirs) / step  # in quantization steps
    assert np.all((diff < 1e-3) | (np.abs(diff - 1) < 1e-3))
    assert np.count_nonzero(diff > 0.5) <= ours.size // 1000


@pytest.mark.torch
def test_to_torch_qat_needs_observed_quantizers(torch):
    fresh = qat.prepare_qat(small_cnn(rng=np.random.default_rng(0)), 8, 8)
    with pytest.raises(ValueError, match="never observed any data"):
        torch_bridge.to_torch_qat(fresh)
