"""Save / load of the integer CNN: bit-exact round trips and a clear error for each bad file."""

import json
import math
import subprocess
import sys
import zipfile
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minquant as mq
from minquant import models, qat
from minquant.data import load_mnist
from minquant.export import cnn, npz
from minquant.export.npz import FileFormatError
from minquant.packing import pack_int4
from minquant.ptq import quantize_model
from minquant.qnn import QuantizedModel


@cache
def _data():
    X_train, _ = load_mnist("train")
    X_test, _ = load_mnist("test")
    return X_train[:300], X_test[:200]


@cache
def _ptq(weight_bits=8, requant="fixedpoint", per_channel=True, rounding="single"):
    X_calib, _ = _data()
    model = models.load_pretrained("small_cnn")
    return quantize_model(
        model, X_calib, weight_bits, 8, per_channel, requant=requant, rounding=rounding
    )


@cache
def _qat(bits, requant):
    rng = np.random.default_rng(0)
    qat_model = qat.prepare_qat(models.load_pretrained("small_cnn"), bits, bits)
    X_calib, _ = _data()
    qat_model(X_calib[:64])  # observe one batch (training mode)
    return qat.convert(qat_model.eval(), requant=requant), rng


def _assert_same(qmodel, loaded, X):
    assert type(loaded) is QuantizedModel
    assert loaded.config == qmodel.config
    assert loaded.quantize.qparams == qmodel.quantize.qparams
    np.testing.assert_array_equal(loaded.forward_int(X), qmodel.forward_int(X))
    np.testing.assert_array_equal(loaded(X), qmodel(X))
    np.testing.assert_array_equal(loaded.simulate(X), qmodel.simulate(X))
    assert loaded.nbytes == qmodel.nbytes and loaded.packed_nbytes == qmodel.packed_nbytes
    assert loaded.float_nbytes == qmodel.float_nbytes
    assert repr(loaded) == repr(qmodel)


@pytest.mark.parametrize("requant", ["fixedpoint", "float"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("weight_bits", [8, 4, 3])
def test_ptq_round_trip_is_bit_exact(tmp_path, requant, per_channel, weight_bits):
    qmodel = _ptq(weight_bits, requant, per_channel)
    path = tmp_path / "model.npz"
    qmodel.save(path)
    _assert_same(qmodel, mq.load(path), _data()[1])


def test_double_rounding_round_trip(tmp_path):
    qmodel = _ptq(8, "fixedpoint", True, "double")
    qmodel.save(tmp_path / "m.npz")
    loaded = mq.load(tmp_path / "m.npz")
    assert loaded.config.rounding == "double"
    _assert_same(qmodel, loaded, _data()[1])


@pytest.mark.parametrize("requant", ["fixedpoint", "float"])
@pytest.mark.parametrize("bits", [8, 4])
def test_qat_round_trip_is_bit_exact(tmp_path, bits, requant):
    qmodel, _ = _qat(bits, requant)
    qmodel.save(tmp_path / "qat.npz")
    loaded = mq.load(str(tmp_path / "qat.npz"))  # a str path works too
    assert loaded.config.observer == "qat"
    _assert_same(qmodel, loaded, _data()[1])


def test_writes_exactly_the_path_and_codes_at_their_width(tmp_path):
    path = tmp_path / "model.bin"  # no .npz suffix is added
    _ptq(4).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    with np.load(path, allow_pickle=False) as f:
        packed = f["0.w_packed"]  # conv1: 16 x 1 x 3 x 3 codes
        assert packed.dtype == np.uint8 and packed.shape == (math.ceil(16 * 9 * 4 / 8),)
        meta = json.loads(f["__meta__"].tobytes())
    assert meta["kind"] == "quantized_cnn" and meta["format_version"] == npz.FORMAT_VERSION
    assert meta["config"]["weight_bits"] == 4
    _ptq(8).save(tmp_path / "w8.npz")
    # The linear layer's 15,680 weights dominate: the 4-bit file saves about half of them.
    saved = (tmp_path / "w8.npz").stat().st_size - path.stat().st_size
    assert saved >= (10 * 1568 + 32 * 16 * 9 + 16 * 9) // 2


@given(
    bits=st.integers(2, 8),
    codes=st.lists(st.integers(-128, 127), min_size=0, max_size=40),
)
def test_pack_codes_round_trip(bits, codes):
    half = 2 ** (bits - 1)
    w_q = np.clip(np.array(codes, dtype=np.int64), -half, half - 1).astype(np.int8)
    packed = cnn.pack_codes(w_q, bits)
    assert packed.size == math.ceil(w_q.size * bits / 8)
    np.testing.assert_array_equal(cnn.unpack_codes(packed, bits, w_q.shape), w_q)


def test_generic_packing_is_pack_int4_at_4_bits():
    # The little-endian bit stream with 4-bit fields is the ONNX INT4 nibble order.
    w_q = np.arange(-8, 8, dtype=np.int8).repeat(3)  # (48,)
    fields = (w_q.astype(np.int16) & 15).astype(np.uint8)[:, None] >> np.arange(4, dtype=np.uint8)
    stream = np.packbits((fields & 1).ravel(), bitorder="little")
    np.testing.assert_array_equal(stream, pack_int4(w_q))
    np.testing.assert_array_equal(cnn.pack_codes(w_q, 4), pack_int4(w_q))


def test_codes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"do not fit 4 bits \(\[-8, 7\]\)"):
        cnn.pack_codes(np.array([9], dtype=np.int8), 4)


# --- damage -------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.npz"
    _ptq(8).save(path)
    return path


def npz_entries(path):
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def rewrite_npz(path, entries):
    with open(path, "wb") as f:
        np.savez(f, **entries)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file.*nothing.npz"):
        mq.load(tmp_path / "nothing.npz")


def test_not_an_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("these are not the weights you are looking for")
    with pytest.raises(FileFormatError, match=r"not a readable minquant .npz file"):
        mq.load(path)


def test_a_single_npy_array(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(3))
    with pytest.raises(FileFormatError, match=r"single .npy array"):
        mq.load(path)


def test_an_npz_that_is_not_a_minquant_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(FileFormatError, match="not a minquant file"):
        mq.load(path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 100):
        saved.write_bytes(data[:keep])
        with pytest.raises(FileFormatError, match="truncated, corrupted or another format"):
            mq.load(saved)


def test_flipped_byte_fails_the_zip_crc(saved):
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("5.w_packed.npy")  # the Linear layer's codes
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0x01  # inside its data
    saved.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match=r"BadZipFile.*CRC"):
        mq.load(saved)


def test_edited_weight_fails_the_hash(saved):
    entries = npz_entries(saved)
    entries["5.w_packed"] = entries["5.w_packed"].copy()
    entries["5.w_packed"][0] += 1  # one weight code changed, the zip itself is valid
    rewrite_npz(saved, entries)
    with pytest.raises(FileFormatError, match=r"fails its SHA-256 check.*edited or corrupted"):
        mq.load(saved)


def test_edited_metadata_fails_the_hash(saved):
    entries = npz_entries(saved)
    meta = json.loads(entries["__meta__"].tobytes())
    meta["input_qparams"]["scale"] *= 2
    entries["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    rewrite_npz(saved, entries)
    with pytest.raises(FileFormatError, match="SHA-256"):
        mq.load(saved)


def test_missing_array(saved):
    entries = npz_entries(saved)
    del entries["2.multiplier"]
    rewrite_npz(saved, entries)
    with pytest.raises(FileFormatError, match=r"missing the array\(s\) \['2.multiplier'\]"):
        mq.load(saved)


def test_another_format_version(saved, monkeypatch):
    monkeypatch.setattr(npz, "FORMAT_VERSION", 2)
    _ptq(8).save(saved)  # as a later minquant would write it
    monkeypatch.undo()
    with pytest.raises(FileFormatError, match="format version 2; this minquant reads version 1"):
        mq.load(saved)


def test_unknown_layer_type(saved):
    meta, arrays = npz.read(saved)
    meta["steps"][1]["type"] = "QuantizedAvgPool2d"  # a layer from a later version
    npz.write(saved, {k: v for k, v in meta.items() if k != "format_version"}, arrays)
    with pytest.raises(FileFormatError, match="unknown layer type 'QuantizedAvgPool2d'"):
        mq.load(saved)


def test_unknown_kind(saved):
    meta, arrays = npz.read(saved)
    meta["kind"] = "speech_model"
    npz.write(saved, meta, arrays)
    with pytest.raises(FileFormatError, match="unknown kind 'speech_model'"):
        mq.load(saved)


def test_inconsistent_requantizer_arrays(saved):
    meta, arrays = npz.read(saved)
    arrays["0.shift"] = arrays["0.shift"] + np.int8(1)  # as an incompatible writer would
    npz.write(saved, meta, arrays)
    with pytest.raises(FileFormatError, match="requantizer array 'shift' differs"):
        mq.load(saved)


def test_pickled_object_array_is_refused_without_running_it(saved):
    entries = npz_entries(saved)
    entries["5.bias"] = np.array([{"not": "an array"}], dtype=object)
    with open(saved, "wb") as f:
        np.savez(f, allow_pickle=True, **entries)
    with pytest.raises(FileFormatError, match="allow_pickle=False"):
        mq.load(saved)


def test_saving_something_else_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="cannot save a Sequential; known kinds: quantized_cnn"):
        npz.save(models.small_cnn(rng=np.random.default_rng(0)), tmp_path / "x.npz")


def test_import_stays_light_and_load_is_lazy():
    code = (
        "import sys, minquant; "
        "print([m for m in ('minquant.export', 'numba', 'onnx') if m in sys.modules], "
        "callable(minquant.load))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] True"
