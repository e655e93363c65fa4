r"""Take a quantized model elsewhere: a minquant file, ONNX.

* :func:`save` / :func:`load` (also ``model.save(path)`` and ``mq.load(path)``): one
  ``.npz`` file, no pickle, integer codes at their packed width, checked by SHA-256
  (:mod:`minquant.export.npz`; the integer CNN's layout in :mod:`minquant.export.cnn`, the
  language model's, float or weight-only, in :mod:`minquant.export.lm`);
* :func:`to_onnx`: the integer CNN as an ONNX graph, in QDQ form or with integer operators
  (:mod:`minquant.export.onnx_export`; needs the ``onnx`` package, imported on first use);
* :func:`to_gguf`: the language model as a llama.cpp GGUF file, matrices in a GGUF block
  type (:mod:`minquant.export.gguf_export`; needs the ``gguf`` package);
* ``python -m minquant export`` (:mod:`minquant.export.cli`).

Importing this package stays light (NumPy only): the ONNX exporter and the layers load on
first use, so that ``python -m minquant --help`` does not start Numba.
"""

import pathlib

from minquant.export.npz import FORMAT_VERSION, KINDS, FileFormatError, load, save

__all__ = [
    "FORMAT_VERSION",
    "GGUF_FORMATS",
    "KINDS",
    "ONNX_FORMS",
    "FileFormatError",
    "load",
    "save",
    "to_gguf",
    "to_onnx",
]

#: The graph forms :func:`to_onnx` writes: QuantizeLinear/DequantizeLinear around float
#: operators, ConvInteger/MatMulInteger with the requantization spelled out, or the float
#: model (the baseline to compare with).
ONNX_FORMS = ("qdq", "integer", "float")
#: The ggml tensor types :func:`to_gguf` stores the language model's matrices in.
GGUF_FORMATS = ("f32", "f16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


def to_onnx(qmodel: object, path: str | pathlib.Path, form: str = "integer") -> object:
    """Write ``qmodel`` as ONNX; see :func:`minquant.export.onnx_export.to_onnx`."""
    from minquant.export.onnx_export import to_onnx as write_onnx

    return write_onnx(qmodel, path, form)


def to_gguf(model: object, path: str | pathlib.Path, fmt: str = "q8_0") -> None:
    """Write the language model as GGUF; see :func:`minquant.export.gguf_export.to_gguf`."""
    from minquant.export.gguf_export import to_gguf as write_gguf

    write_gguf(model, path, fmt)
