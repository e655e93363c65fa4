"""Language models: evaluation (perplexity), sampling (generate) and weight-only quantization.

Names are loaded on first use (PEP 562), so ``import minquant.llm`` compiles nothing:

* :mod:`minquant.llm.lm`: ``perplexity``, ``next_token_loss``, ``generate``;
* :mod:`minquant.llm.weight_only`: ``quantize_weights``, ``WeightOnlyLinear`` and the registry
  of weight quantizers (``WEIGHT_QUANTIZERS``, the ``method=`` hook);
* :mod:`minquant.llm.gptq_quant`: ``gptq`` (one layer; ``method="gptq"`` for a model);
* :mod:`minquant.llm.awq`: ``awq_scales`` and ``awq_clip`` (one layer; ``method="awq"`` for a
  model: scales, then clipping, then RTN) and ``keep_salient_channels`` (the 1% salient-channel
  experiment).
* :mod:`minquant.llm.formats`: ``FormatLinear``, a weight stored in a number format
  (``quantize_weights(model, format="q4_0")``).
* :mod:`minquant.llm.activations`: ``capture_linear_inputs``, ``activation_stats``,
  ``inject_outlier_channel`` (a synthetic outlier channel, same float function);
* :mod:`minquant.llm.w8a8`: ``quantize_activations``, ``W8A8Linear``,
  ``int8_decomposed_matmul`` (LLM.int8()), ``float_column_fraction``, ``argmax_agreement``;
* :mod:`minquant.llm.smoothquant`: ``smoothquant_scales``, ``fold_smoothing``, ``smooth_model``;
* :mod:`minquant.llm.kv_cache`: ``QuantizedKVCache``, ``KVQuantizedLM``.

>>> import numpy as np
>>> import minquant as mq
>>> lm = mq.models.load_pretrained("tiny_lm")
>>> text = mq.llm.generate(lm, "ROMEO:", 40, temperature=0.8, rng=np.random.default_rng(0))
>>> text.startswith("ROMEO:"), len(text)
(True, 46)
"""

import importlib

#: public name -> the submodule that defines it
_LAZY = {
    "generate": "lm",
    "next_token_loss": "lm",
    "perplexity": "lm",
    "quantize_weights": "weight_only",
    "WeightOnlyLinear": "weight_only",
    "WEIGHT_QUANTIZERS": "weight_only",
    "gptq": "gptq_quant",
    "awq_scales": "awq",
    "awq_clip": "awq",
    "keep_salient_channels": "awq",
    "FormatLinear": "formats",
    "capture_linear_inputs": "activations",
    "activation_stats": "activations",
    "inject_outlier_channel": "activations",
    "quantize_activations": "w8a8",
    "W8A8Linear": "w8a8",
    "int8_decomposed_matmul": "w8a8",
    "float_column_fraction": "w8a8",
    "argmax_agreement": "w8a8",
    "smoothquant_scales": "smoothquant",
    "fold_smoothing": "smoothquant",
    "smooth_model": "smoothquant",
    "QuantizedKVCache": "kv_cache",
    "KVQuantizedLM": "kv_cache",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"minquant.llm.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'minquant.llm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = sorted(_LAZY)
