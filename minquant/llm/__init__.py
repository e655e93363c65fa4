"""Language models: evaluation (perplexity) and sampling (generate).

Imports nothing heavy (no Numba): the functions live in :mod:`minquant.llm.lm`.

>>> import numpy as np
>>> import minquant as mq
>>> lm = mq.models.load_pretrained("tiny_lm")
>>> text = mq.llm.generate(lm, "ROMEO:", 40, temperature=0.8, rng=np.random.default_rng(0))
>>> text.startswith("ROMEO:"), len(text)
(True, 46)
"""

from minquant.llm.lm import generate, next_token_loss, perplexity

__all__ = ["generate", "next_token_loss", "perplexity"]
