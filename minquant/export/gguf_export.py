r"""GGUF: the language model as a llama.cpp file, written with the ``gguf`` package.

A GGUF file is a header of typed key-value metadata followed by named tensors, each stored
in a ggml type: float (F32, F16) or a block format (Q8_0, Q4_0, ...; the byte layouts of
:mod:`minquant.formats.gguf_blocks`). :func:`to_gguf` writes minquant's
:class:`~minquant.nn.TransformerLM` under llama.cpp's ``llama`` architecture names:

| minquant | GGUF tensor | stored as |
|---|---|---|
| ``tok_embeddings.weight`` (vocab, dim) | ``token_embd.weight`` | ``fmt`` |
| ``layers.{i}.attn_norm.weight`` (dim,) | ``blk.{i}.attn_norm.weight`` | F32 |
| ``layers.{i}.attn.wq/wk/wv/wo.weight`` | ``blk.{i}.attn_q/k/v/output.weight`` | ``fmt`` |
| ``layers.{i}.ffn_norm.weight`` (dim,) | ``blk.{i}.ffn_norm.weight`` | F32 |
| ``layers.{i}.mlp.w1/w3/w2.weight`` | ``blk.{i}.ffn_gate/up/down.weight`` | ``fmt`` |
| ``norm.weight`` (dim,) | ``output_norm.weight`` | F32 |
| ``output.weight`` (vocab, dim) | ``output.weight`` | ``fmt`` |

The block bytes are minquant's own (:func:`minquant.formats.quantize_blocks`), which the
tests check byte for byte against ``gguf.quants.quantize``; :func:`read_gguf` reads a file
back with the package's reader and rebuilds the float model from the dequantized tensors.

What a llama.cpp runtime would still need (documented in docs/numerics.md): a tokenizer
type it knows (the character vocabulary is stored as ``tokenizer.ggml.tokens`` with
``tokenizer.ggml.model = "none"``), and nothing else for the weights: minquant's RoPE pairs
adjacent features (Meta's layout, llama.cpp's ``LLAMA_ROPE_TYPE_NORM``), so ``attn_q`` and
``attn_k`` need no permutation.

Reference: the GGUF specification in the ggml repository (``docs/gguf.md``).
"""

from __future__ import annotations

import pathlib

import numpy as np

from minquant import formats, nn
from minquant.export import GGUF_FORMATS

ARCH = "llama"


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise ImportError(
            "GGUF export needs the gguf package: pip install gguf (or the dev extra)"
        ) from err
    return gguf


def tensor_names(model: nn.TransformerLM) -> dict[str, str]:
    """minquant parameter name -> GGUF tensor name (llama.cpp's ``llama`` names).

    >>> import minquant as mq
    >>> names = tensor_names(mq.models.tiny_lm())
    >>> names["layers.0.mlp.w1.weight"], names["norm.weight"]
    ('blk.0.ffn_gate.weight', 'output_norm.weight')
    """
    names = {
        "tok_embeddings.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "output.weight": "output.weight",
    }
    per_block = {
        "attn_norm.weight": "attn_norm.weight",
        "attn.wq.weight": "attn_q.weight",
        "attn.wk.weight": "attn_k.weight",
        "attn.wv.weight": "attn_v.weight",
        "attn.wo.weight": "attn_output.weight",
        "ffn_norm.weight": "ffn_norm.weight",
        "mlp.w1.weight": "ffn_gate.weight",
        "mlp.w3.weight": "ffn_up.weight",
        "mlp.w2.weight": "ffn_down.weight",
    }
    for i in range(model.config.n_layers):
        for ours, theirs in per_block.items():
            names[f"layers.{i}.{ours}"] = f"blk.{i}.{theirs}"
    return names


def _check_model(model: object) -> None:
    if not isinstance(model, nn.TransformerLM):
        raise TypeError(f"model must be a minquant nn.TransformerLM, got {type(model).__name__}")
    state = model.state_dict()
    missing = sorted(set(tensor_names(model)) - set(state))
    if missing:
        raise ValueError(
            f"model must hold float nn.Linear weights (quantize when exporting, with fmt=); "
            f"missing {missing[:3]}"
        )


def to_gguf(model: nn.TransformerLM, path: str | pathlib.Path, fmt: str = "q8_0") -> None:
    """Write the float ``model`` to ``path`` as GGUF, matrices quantized to ``fmt``.

    ``fmt`` is one of :data:`GGUF_FORMATS`; the embedding, the seven projections of every
    block and the output layer are stored in it, the RMSNorm weights in F32.

    >>> import tempfile, pathlib
    >>> import minquant as mq
    >>> lm = mq.models.load_pretrained("tiny_lm")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny_lm.gguf"
    >>> to_gguf(lm, path, "q4_0")
    >>> path.stat().st_size < 650_000  # 4.5 bits per weight: about 1/7 of float32's 3.2 MB
    True
    """
    if fmt not in GGUF_FORMATS:
        raise ValueError(f"fmt must be one of {list(GGUF_FORMATS)}, got {fmt!r}")
    _check_model(model)
    gguf = _gguf()
    from minquant.data import VOCAB

    c = model.config
    writer = gguf.GGUFWriter(str(path), ARCH)
    # 1. metadata: what a llama runtime reads to build the graph
    writer.add_name("minquant tiny_lm")
    writer.add_context_length(c.max_seq_len)
    writer.add_embedding_length(c.dim)
    writer.add_block_count(c.n_layers)
    writer.add_feed_forward_length(c.hidden_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_heads)
    writer.add_rope_dimension_count(c.dim // c.n_heads)
    writer.add_rope_freq_base(float(c.rope_base))
    writer.add_layer_norm_rms_eps(float(c.norm_eps))
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("none")
    writer.add_token_list(list(VOCAB))
    # 2. tensors: matrices in fmt, norms in F32
    state = model.state_dict()
    for ours, theirs in tensor_names(model).items():
        w = np.ascontiguousarray(state[ours], dtype=np.float32)  # (out, in) or (dim,)
        if w.ndim == 1 or fmt == "f32":
            writer.add_tensor(theirs, w)
        elif fmt == "f16":
            writer.add_tensor(theirs, w.astype(np.float16))
        else:
            data = formats.quantize_blocks(w, fmt)  # (out, bytes per row) uint8
            qtype = gguf.GGMLQuantizationType[fmt.upper()]
            writer.add_tensor(theirs, data, raw_dtype=qtype)
    # 3. the file: header, metadata, then the tensor data (aligned)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_gguf(path: str | pathlib.Path) -> nn.TransformerLM:
    """Read a file written by :func:`to_gguf` with the ``gguf`` package's reader.

    Every tensor is dequantized with ``gguf.quants.dequantize`` (the reference decoder, not
    minquant's) and loaded into a new float :class:`~minquant.nn.TransformerLM` built from
    the file's metadata.
    """
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> float:
        return reader.fields[key].contents()

    config = nn.TransformerConfig(
        vocab_size=int(field(f"{ARCH}.vocab_size")),
        dim=int(field(f"{ARCH}.embedding_length")),
        n_layers=int(field(f"{ARCH}.block_count")),
        n_heads=int(field(f"{ARCH}.attention.head_count")),
        hidden_dim=int(field(f"{ARCH}.feed_forward_length")),
        max_seq_len=int(field(f"{ARCH}.context_length")),
        # NOTE: GGUF stores eps as float32; its shortest decimal (1e-05, not 9.99999974e-06)
        # is the config value it came from.
        norm_eps=float(str(np.float32(field(f"{ARCH}.attention.layer_norm_rms_epsilon")))),
        rope_base=float(field(f"{ARCH}.rope.freq_base")),
    )
    model = nn.TransformerLM(config, rng=np.random.default_rng(0))
    tensors = {t.name: t for t in reader.tensors}
    state = {}
    for ours, theirs in tensor_names(model).items():
        t = tensors[theirs]
        w = gguf.quants.dequantize(t.data, t.tensor_type)  # ggml order: (rows, row length)
        state[ours] = np.asarray(w, dtype=np.float32).reshape(model.state_dict()[ours].shape)
    model.load_state_dict(state)
    return model.eval()
