"""quantize_weights(model, format=...): every format on tiny_lm, real bytes, exact forward."""

import numpy as np
import pytest

import minquant as mq
from minquant import formats, nn
from minquant.llm.formats import (
    FormatLinear,
    decode_weight,
    encode_weight,
    model_nbytes,
    stored_shape,
)


@pytest.fixture(scope="module")
def lm():
    return mq.models.load_pretrained("tiny_lm")


@pytest.fixture(scope="module")
def tokens():
    return mq.data.encode(mq.data.load_text("val")[:1025])


def linears(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("fmt", formats.WEIGHT_FORMATS)
def test_every_format_on_tiny_lm(lm, tokens, fmt):
    before = {k: v.copy() for k, v in lm.state_dict().items()}
    qlm = mq.llm.quantize_weights(lm, format=fmt)
    # the input model is untouched
    assert all(isinstance(m, nn.Linear) for _, m in linears(lm))
    after = lm.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 384)).astype(np.float32)
    total = 0
    for name, linear in linears(lm):
        layer = _submodule(qlm, name)
        assert isinstance(layer, FormatLinear) and layer.fmt == fmt
        w = linear.weight.data  # (out, in)
        # bytes: exactly what the formats package says the stored array takes
        assert layer.nbytes() == formats.weight_nbytes(fmt, layer.stored) == layer.data.nbytes
        assert layer.bits_per_weight() == 8 * layer.nbytes() / w.size
        total += layer.nbytes()
        if layer.stored == w.shape:  # rows of whole blocks: the bytes of quantize_weight
            data, w_hat = formats.quantize_weight(w, fmt)
            assert np.array_equal(layer.data, data)
            assert layer.nbytes() == formats.weight_nbytes(fmt, w.shape)
        else:  # the flat layout: the weight's values in blocks, the last one padded
            flat = np.zeros(layer.stored[0] * layer.stored[1], np.float32)
            flat[: w.size] = w.ravel()
            if fmt == "ternary":
                w_q, gamma = formats.ternarize(w)
                flat[: w.size] = (w_q.astype(np.float32) * gamma).ravel()
                w_hat = np.float16(gamma).astype(np.float32) * w_q
            else:
                blocks = formats.quantize_blocks(flat.reshape(layer.stored), fmt)
                assert np.array_equal(layer.data, blocks)
                w_hat = formats.dequantize_blocks(blocks, fmt, layer.stored).ravel()
                w_hat = w_hat[: w.size].reshape(w.shape)
        # forward = dequantize with the formats package's decoder, then a float matmul
        assert np.array_equal(layer.dequantized_weight(), w_hat)
        xi = x[:, : w.shape[1]]
        np.testing.assert_allclose(layer(xi), xi @ w_hat.T, rtol=1e-5, atol=1e-5)
    assert model_nbytes(qlm) == (total, sum(m.weight.data.size for _, m in linears(lm)))

    logits = qlm(tokens[None, :128])
    assert logits.shape == (1, 128, 63) and np.isfinite(logits).all()


def _submodule(model, name):
    for part in name.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


@pytest.mark.parametrize(("fmt", "bpw"), [("q8_0", 8.5), ("q4_0", 4.5), ("mxfp4", 4.25)])
def test_bits_per_weight_of_tiny_lm(lm, fmt, bpw):
    qlm = mq.llm.quantize_weights(lm, format=fmt)
    n_bytes, n_weights = model_nbytes(qlm)
    assert 8 * n_bytes / n_weights == bpw


def test_fp8_and_ternary_bits_per_weight(lm):
    n_bytes, n_weights = model_nbytes(mq.llm.quantize_weights(lm, format="fp8_e4m3"))
    rows = sum(m.out_features for _, m in linears(lm))
    assert n_bytes == n_weights + 4 * rows  # one byte per weight + a float32 scale per row
    # ternary: TQ2_0 blocks of 256 (66 bytes), tiny_lm's 128- and 384-wide rows read flat
    n_bytes, n_weights = model_nbytes(mq.llm.quantize_weights(lm, format="ternary"))
    blocks = sum(-(-m.weight.data.size // 256) for _, m in linears(lm))
    assert n_bytes == 66 * blocks


def test_gguf_oracle_bytes(lm):
    gguf = pytest.importorskip("gguf", reason="the gguf package is the oracle for GGUF blocks")
    qlm = mq.llm.quantize_weights(lm, format="q4_0")
    w = lm.layers[0].mlp.w2.weight.data  # (128, 384)
    expected = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(qlm.layers[0].mlp.w2.data, expected)
    w_hat = gguf.quants.dequantize(expected, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(qlm.layers[0].mlp.w2.dequantized_weight(), w_hat)


def test_perplexity_close_to_float_for_8_bit(lm, tokens):
    float_ppl = mq.llm.perplexity(lm, tokens)
    for fmt, tol in (("q8_0", 0.005), ("fp8_e4m3", 0.01), ("nf4", 0.05)):
        ppl = mq.llm.perplexity(mq.llm.quantize_weights(lm, format=fmt), tokens)
        assert abs(ppl / float_ppl - 1) < tol, (fmt, ppl, float_ppl)


def test_flat_layout_equals_the_reshaped_weight():
    w = np.random.default_rng(1).normal(size=(4, 128)).astype(np.float32)
    for fmt in ("tq1_0", "tq2_0"):
        data, stored = encode_weight(w, fmt)
        assert stored == (2, 256)
        assert np.array_equal(data, formats.quantize_blocks(w.reshape(2, 256), fmt))
        w_hat = decode_weight(data, fmt, w.shape, stored)
        assert np.array_equal(
            w_hat, formats.quantize_weight(w.reshape(2, 256), fmt)[1].reshape(4, 128)
        )


def test_bad_names_and_arguments(lm):
    with pytest.raises(ValueError, match=r"format must be one of .*'nf4'.*'q4_0'.*got 'q3_0'"):
        mq.llm.quantize_weights(lm, format="q3_0")
    for kwargs in ({"bits": 4}, {"group_size": 64}, {"bits": 8, "group_size": None}):
        with pytest.raises(ValueError, match=r"format or bits/group_size, not both.*q4_0"):
            mq.llm.quantize_weights(lm, format="q4_0", **kwargs)
    with pytest.raises(ValueError, match="method, symmetric or X_calib"):
        mq.llm.quantize_weights(lm, format="q4_0", symmetric=True)
    # without format the defaults are unchanged: 4 bits, groups of 64
    layer = mq.llm.quantize_weights(lm).output
    assert (layer.num_bits, layer.group_size) == (4, 64)


def test_layer_errors():
    rng = np.random.default_rng(0)
    layer = FormatLinear.from_linear(nn.Linear(64, 8, rng=rng), "q8_0")
    with pytest.raises(ValueError, match=r"float32 input of shape \(\.\.\., 64\)"):
        layer(np.ones((2, 64)))
    with pytest.raises(NotImplementedError, match="inference only"):
        layer.backward(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="must be 544 uint8 bytes"):
        FormatLinear(layer.data[:, :-1], "q8_0", (8, 64), (8, 64))
    with pytest.raises(ValueError, match="not a multiple of 8"):
        stored_shape("binary", (4, 12))
    linear = nn.Linear(64, 8, rng=rng)  # with a bias
    layer = FormatLinear.from_linear(linear, "nf4")
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w_hat = formats.quantize_weight(linear.weight.data, "nf4")[1]
    expected = x @ w_hat.T + linear.bias.data
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
