"""Language models: weight-only quantization (``mq.llm.quantize_weights``).

Names are loaded on first use (PEP 562), so ``import minquant.llm`` compiles nothing.
"""

import importlib

#: public name -> the submodule that defines it
_LAZY = {
    "quantize_weights": "weight_only",
    "WeightOnlyLinear": "weight_only",
    "WEIGHT_QUANTIZERS": "weight_only",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"minquant.llm.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'minquant.llm' has no attribute {name!r}")


__all__ = sorted(_LAZY)
