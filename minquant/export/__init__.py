r"""Take a quantized model elsewhere: a minquant file, ONNX.

* :func:`save` / :func:`load` (also ``qmodel.save(path)`` and ``mq.load(path)``): one
  ``.npz`` file, no pickle, integer codes at their packed width, checked by SHA-256
  (:mod:`minquant.export.npz`; the integer CNN's layout in :mod:`minquant.export.cnn`);
* :func:`to_onnx`: the integer CNN as an ONNX graph, in QDQ form or with integer operators
  (:mod:`minquant.export.onnx_export`; needs the ``onnx`` package, imported on first use);
* ``python -m minquant export`` (:mod:`minquant.export.cli`).
"""

from minquant.export.npz import FORMAT_VERSION, KINDS, FileFormatError, load, save
from minquant.export.onnx_export import ONNX_FORMS, to_onnx

__all__ = ["FORMAT_VERSION", "KINDS", "ONNX_FORMS", "FileFormatError", "load", "save", "to_onnx"]
