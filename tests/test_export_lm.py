"""Save / load of the language model with weight-only layers (kind ``weight_only_lm``)."""

import json
import math
import zipfile
from functools import cache

import numpy as np
import pytest
from test_export_npz import npz_entries, rewrite_npz  # tests/ is on sys.path (prepend mode)

import minquant as mq
from minquant import models, nn
from minquant.data import encode, load_text
from minquant.export import npz
from minquant.export.npz import FileFormatError
from minquant.llm.formats import model_nbytes
from minquant.llm.weight_only import WeightOnlyLinear, quantize_rtn, quantize_weights
from minquant.packing import unpack_bits

CONFIG = nn.TransformerConfig(
    vocab_size=20, dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_seq_len=32
)


@cache
def _float_lm():
    return nn.TransformerLM(CONFIG, rng=np.random.default_rng(0)).eval()


@cache
def _tokens(batch=4, length=32):
    return np.random.default_rng(1).integers(0, CONFIG.vocab_size, (batch, length))


@cache
def _quantized(bits=4, group_size=32, symmetric=False, method="rtn"):
    X_calib = _tokens(2, 16) if method != "rtn" else None
    return quantize_weights(_float_lm(), bits, group_size, method, symmetric, X_calib)


def _weight_only(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}


def _assert_same(model, loaded):
    assert type(loaded) is nn.TransformerLM and loaded.config == model.config
    assert not loaded.training
    for x in (_tokens(), _tokens(1, 8)):  # BLAS tiles (128 rows) and the GEMV kernel (8)
        np.testing.assert_array_equal(loaded(x), model(x))
    layers, loaded_layers = _weight_only(model), _weight_only(loaded)
    assert layers.keys() == loaded_layers.keys()
    for name, layer in layers.items():
        other = loaded_layers[name]
        assert repr(other) == repr(layer) and other.nbytes() == layer.nbytes()
        for attr in ("packed", "scale", "zero_point"):
            a, b = getattr(layer, attr), getattr(other, attr)
            assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name, value in state.items():
        assert loaded_state[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded_state[name], value)


@pytest.mark.parametrize(
    "bits, group_size, symmetric",
    [(4, 32, False), (4, 64, True), (8, None, False), (3, 32, True), (2, 64, False)],
)
def test_round_trip_is_bit_exact(tmp_path, bits, group_size, symmetric):
    model = _quantized(bits, group_size, symmetric)
    path = tmp_path / "lm.npz"
    model.save(path)
    _assert_same(model, mq.load(path))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_and_awq_models_save_the_same_way(tmp_path, method):
    model = _quantized(4, 32, False, method)
    model.save(tmp_path / f"{method}.npz")
    _assert_same(model, mq.load(tmp_path / f"{method}.npz"))


def test_float_model_and_a_layer_left_float(tmp_path):
    _float_lm().save(tmp_path / "float.npz")
    loaded = mq.load(tmp_path / "float.npz")
    assert _weight_only(loaded) == {}
    _assert_same(_float_lm(), loaded)
    mixed = quantize_weights(_float_lm(), 4, 32)
    mixed.output = _float_lm().output  # the vocabulary projection stays float
    mixed.save(tmp_path / "mixed.npz")
    loaded = mq.load(tmp_path / "mixed.npz")
    assert type(loaded.output) is nn.Linear and len(_weight_only(loaded)) == 14
    _assert_same(mixed, loaded)


def test_codes_are_stored_as_a_plain_bit_stream_at_their_width(tmp_path):
    # The stored codes are the RTN codes of the float weights, row after row, b bits each
    # (not the kernel's interleaved byte order), with float16 scales and uint8 zero points.
    path = tmp_path / "w3.npz"
    _quantized(3, 32, False).save(path)
    w = _float_lm().layers[0].mlp.w2.weight.data  # (64, 128)
    codes, scale, zero_point = quantize_rtn(w, 3, 32, symmetric=False)
    with np.load(path, allow_pickle=False) as f:
        stream = f["layers.0.mlp.w2.codes"]
        assert stream.dtype == np.uint8 and stream.shape == (math.ceil(64 * 128 * 3 / 8),)
        np.testing.assert_array_equal(unpack_bits(stream, 3, (64, 128), signed=False), codes)
        assert f["layers.0.mlp.w2.scale"].dtype == np.float16
        np.testing.assert_array_equal(f["layers.0.mlp.w2.scale"].astype(np.float32), scale)
        np.testing.assert_array_equal(f["layers.0.mlp.w2.zero_point"], zero_point)
        assert f["layers.0.mlp.w2.zero_point"].dtype == np.uint8
        assert "layers.0.mlp.w2.weight" not in f.files and "output.weight" not in f.files
        meta = json.loads(f["__meta__"].tobytes())
    assert meta["kind"] == "weight_only_lm" and meta["format_version"] == npz.FORMAT_VERSION
    assert meta["config"] == {**CONFIG.__dict__}
    assert meta["weight_only"]["output"] == {
        "in_features": 64,
        "out_features": 20,
        "bits": 3,
        "group_size": 32,
        "symmetric": False,
        "has_bias": False,
    }


@pytest.mark.parametrize("bits, group_size", [(4, 64), (8, None)])
def test_file_size_is_the_real_bytes_plus_headers(tmp_path, bits, group_size):
    model = _quantized(bits, group_size)
    path = tmp_path / "lm.npz"
    model.save(path)
    weight_bytes, _ = model_nbytes(model)
    real = weight_bytes + sum(p.data.nbytes for p in model.parameters())
    with zipfile.ZipFile(path) as z:
        entries = len(z.infolist())
    # NOTE: the .npz is uncompressed; each array adds a 128-byte .npy header and its zip
    # entries (local header, central directory, zip64 fields), under 400 bytes with its name.
    assert real < path.stat().st_size < real + 400 * entries + 8000


def test_packaged_tiny_lm_w4_logits_and_perplexity(tmp_path):
    lm = models.load_pretrained("tiny_lm")
    qlm = quantize_weights(lm, bits=4, group_size=64)
    qlm.save(tmp_path / "tiny_lm_w4.npz")
    loaded = mq.load(tmp_path / "tiny_lm_w4.npz")
    tokens = encode(load_text("val")[:257])
    x = tokens[:-1].reshape(2, 128)
    np.testing.assert_array_equal(loaded(x), qlm(x))
    assert mq.llm.perplexity(loaded, tokens) == mq.llm.perplexity(qlm, tokens)


def test_save_refuses_what_the_kind_cannot_hold(tmp_path):
    with pytest.raises(TypeError, match=r"layer 'layers\.0\.attn\.wq' is a FormatLinear"):
        quantize_weights(_float_lm(), format="q4_0").save(tmp_path / "x.npz")
    model = _quantized(4, 32)
    extra = quantize_weights(_float_lm(), 4, 32)
    extra.layers[0].extra = nn.ReLU()
    with pytest.raises(TypeError, match=r"has an extra module 'layers\.0\.extra'"):
        extra.save(tmp_path / "x.npz")
    wide = quantize_weights(_float_lm(), 4, 32).to(np.float64)
    with pytest.raises(TypeError, match=r"'tok_embeddings\.weight' is float64"):
        wide.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
    model.save(tmp_path / "ok.npz")  # the model itself was not changed by any of this
    _assert_same(model, mq.load(tmp_path / "ok.npz"))


# --- damage -------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.npz"
    _quantized(4, 32).save(path)
    return path


def test_truncated_file(saved):
    data = saved.read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 100):
        saved.write_bytes(data[:keep])
        with pytest.raises(FileFormatError, match="truncated, corrupted or another format"):
            mq.load(saved)


def test_edited_codes_fail_the_hash(saved):
    entries = npz_entries(saved)
    entries["layers.1.mlp.w1.codes"] = entries["layers.1.mlp.w1.codes"].copy()
    entries["layers.1.mlp.w1.codes"][7] ^= 0x10  # one 4-bit code changed, a valid zip
    rewrite_npz(saved, entries)
    with pytest.raises(FileFormatError, match=r"fails its SHA-256 check.*edited or corrupted"):
        mq.load(saved)


def test_edited_scale_fails_the_hash(saved):
    entries = npz_entries(saved)
    entries["output.scale"] = entries["output.scale"] * np.float16(2)
    rewrite_npz(saved, entries)
    with pytest.raises(FileFormatError, match="SHA-256"):
        mq.load(saved)


def test_another_format_version(saved, monkeypatch):
    monkeypatch.setattr(npz, "FORMAT_VERSION", 2)
    _quantized(4, 32).save(saved)  # as a later minquant would write it
    monkeypatch.undo()
    with pytest.raises(FileFormatError, match="format version 2; this minquant reads version 1"):
        mq.load(saved)


@pytest.mark.parametrize("name", ["layers.0.attn.wk.zero_point", "norm.weight"])
def test_missing_array(saved, name):
    entries = npz_entries(saved)
    del entries[name]
    rewrite_npz(saved, entries)
    with pytest.raises(FileFormatError, match=rf"missing the array\(s\) \['{name}'\]"):
        mq.load(saved)


def test_unknown_kind(saved):
    meta, arrays = npz.read(saved)
    meta["kind"] = "speech_model"
    npz.write(saved, meta, arrays)
    with pytest.raises(FileFormatError, match="unknown kind 'speech_model'"):
        mq.load(saved)


def test_the_other_kind(saved, tmp_path):
    # A language model labelled as a CNN, and a CNN labelled as a language model (both with
    # a valid hash, as a wrong writer would make them): the metadata does not fit.
    meta, arrays = npz.read(saved)
    npz.write(saved, {**meta, "kind": "quantized_cnn"}, arrays)
    with pytest.raises(FileFormatError, match="metadata does not match this version"):
        mq.load(saved)
    X, _ = mq.data.load_mnist("test")
    cnn_path = tmp_path / "cnn.npz"
    mq.ptq.quantize_model(models.load_pretrained("small_cnn"), X[:100]).save(cnn_path)
    meta, arrays = npz.read(cnn_path)
    npz.write(cnn_path, {**meta, "kind": "weight_only_lm"}, arrays)
    with pytest.raises(FileFormatError, match=r"config lacks the field\(s\) \['dim', "):
        mq.load(cnn_path)


def test_inconsistent_arrays_with_a_valid_hash(saved):
    # What a wrong writer could produce: each names the layer or parameter at fault.
    meta, arrays = npz.read(saved)
    short = {**arrays, "layers.0.attn.wq.codes": arrays["layers.0.attn.wq.codes"][:-1]}
    npz.write(saved, meta, short)
    with pytest.raises(FileFormatError, match=r"weight-only layer 'layers\.0\.attn\.wq': packed"):
        mq.load(saved)
    moved = json.loads(json.dumps(meta))
    moved["weight_only"]["layers.0.attn.norm"] = moved["weight_only"].pop("layers.0.attn.wq")
    npz.write(saved, moved, arrays)
    not_a_linear = r"'layers\.0\.attn\.norm' \(64, 64\) is not a Linear"
    with pytest.raises(FileFormatError, match=not_a_linear):
        mq.load(saved)
    wide = {**arrays, "norm.weight": arrays["norm.weight"].astype(np.float64)}
    npz.write(saved, meta, wide)
    with pytest.raises(FileFormatError, match=r"parameter 'norm\.weight' is float64"):
        mq.load(saved)
    lacking = dict(meta, config={k: v for k, v in meta["config"].items() if k != "norm_eps"})
    npz.write(saved, lacking, arrays)
    with pytest.raises(FileFormatError, match=r"config lacks the field\(s\) \['norm_eps'\]"):
        mq.load(saved)
    npz.write(saved, meta, {k: v for k, v in arrays.items() if k != "norm.weight"})
    with pytest.raises(FileFormatError, match=r"lacks the parameter\(s\) \['norm.weight'\]"):
        mq.load(saved)
