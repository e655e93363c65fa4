"""minquant.export.gguf_export: GGUF files checked with the gguf package's own reader."""

import numpy as np
import pytest

import minquant as mq
from minquant import nn
from minquant.export import to_gguf
from minquant.export.gguf_export import read_gguf, tensor_names

gguf = pytest.importorskip("gguf", reason="the gguf package (dev extra) is the GGUF oracle")


@pytest.fixture(scope="module")
def lm() -> nn.TransformerLM:
    return mq.models.load_pretrained("tiny_lm")


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q5_1", "f16"])
def test_every_tensor_is_what_gguf_itself_writes(lm, tmp_path, fmt):
    path = tmp_path / "lm.gguf"
    to_gguf(lm, path, fmt)
    reader = gguf.GGUFReader(str(path))
    state, names = lm.state_dict(), tensor_names(lm)
    assert sorted(t.name for t in reader.tensors) == sorted(names.values())
    ours_of = {theirs: ours for ours, theirs in names.items()}
    for t in reader.tensors:
        w = state[ours_of[t.name]]  # (out, in) or (dim,) float32
        if w.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            want = w
        elif fmt == "f16":
            want = w.astype(np.float16)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType[fmt.upper()]
            want = gguf.quants.quantize(w, t.tensor_type)  # the reference encoder
        got = np.asarray(t.data).view(np.uint8).ravel()
        assert np.array_equal(got, np.asarray(want).view(np.uint8).ravel()), t.name


def test_metadata_describes_the_model(lm, tmp_path):
    path = tmp_path / "lm.gguf"
    to_gguf(lm, path, "q8_0")
    fields = gguf.GGUFReader(str(path)).fields
    c = lm.config
    assert fields["general.architecture"].contents() == "llama"
    assert fields["llama.block_count"].contents() == c.n_layers
    assert fields["llama.embedding_length"].contents() == c.dim
    assert fields["llama.feed_forward_length"].contents() == c.hidden_dim
    assert fields["llama.attention.head_count"].contents() == c.n_heads
    assert fields["llama.context_length"].contents() == c.max_seq_len
    assert "".join(fields["tokenizer.ggml.tokens"].contents()) == mq.data.VOCAB


def test_read_back_float_model_is_identical(lm, tmp_path):
    path = tmp_path / "lm.gguf"
    to_gguf(lm, path, "f32")
    back = read_gguf(path)
    assert back.config == lm.config
    tokens = mq.data.encode("ROMEO: what light through yonder window breaks")[None]  # (1, T)
    np.testing.assert_array_equal(back(tokens), lm(tokens))


def test_read_back_q4_0_model_holds_the_block_values(lm, tmp_path):
    path = tmp_path / "lm.gguf"
    to_gguf(lm, path, "q4_0")
    back = read_gguf(path).state_dict()
    w = lm.state_dict()["layers.1.mlp.w2.weight"]  # (128, 384)
    want = mq.formats.dequantize_blocks(mq.formats.quantize_blocks(w, "q4_0"), "q4_0", w.shape)
    np.testing.assert_array_equal(back["layers.1.mlp.w2.weight"], want)


def test_bad_arguments(lm, tmp_path):
    with pytest.raises(ValueError, match=r"fmt must be one of .*got 'q3_k'"):
        to_gguf(lm, tmp_path / "x.gguf", "q3_k")
    with pytest.raises(
        TypeError, match=r"model must be a minquant nn\.TransformerLM, got Sequential"
    ):
        to_gguf(mq.models.load_pretrained("small_cnn"), tmp_path / "x.gguf")
