"""minquant: neural-network quantization from first principles.

The quantization primitives live at the top level (``mq.quantize``, ``mq.qrange``, ...).
Everything else is a submodule that is imported on first use, so ``import minquant`` stays
fast and compiles nothing (Numba kernels compile the first time they are called):

>>> import minquant as mq
>>> mq.qrange(num_bits=8, signed=True)
(-128, 127)
>>> mq.data.load_mnist("test")[0].shape
(1000, 1, 28, 28)
"""

import importlib
from types import ModuleType

from minquant.quant import (
    calc_qparams,
    dequantize,
    fake_quantize,
    mse,
    pack_int4,
    qrange,
    quantize,
    sqnr,
    unpack_int4,
)

__version__ = "0.1.0"

# NOTE: submodules are loaded lazily (PEP 562) so that `import minquant` does not pay for
# Numba, matplotlib or torch until a learner actually uses them.
_SUBMODULES = (
    "calibration",
    "data",
    "export",
    "fake_quant",
    "fixedpoint",
    "formats",
    "granularity",
    "kernels",
    "llm",
    "lowbit_qat",
    "models",
    "nn",
    "observers",
    "packing",
    "photo",
    "ptq",
    "qat",
    "qnn",
    "quant",
    "rounding",
    "torch_bridge",
    "train",
    "viz",
)


def load(path: str) -> object:
    """The model saved in ``path`` by ``model.save(path)`` (``QuantizedModel``, ``TransformerLM``).

    See :mod:`minquant.export.npz` for the file format and the errors a bad file raises.
    """
    from minquant.export.npz import load as load_file

    return load_file(path)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"minquant.{name}")
    raise AttributeError(f"module 'minquant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])


__all__ = [
    "__version__",
    "calc_qparams",
    "dequantize",
    "fake_quantize",
    "load",
    "mse",
    "pack_int4",
    "qrange",
    "quantize",
    "sqnr",
    "unpack_int4",
]
