"""A small float neural-network engine with explicit forward and backward passes.

Every layer shows its own chain rule; there is no autograd. The API follows ``torch.nn``
(layouts, names, default initialisation), so weights move between the two one to one.

>>> import numpy as np
>>> from minquant import nn
>>> rng = np.random.default_rng(0)
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, rng=rng))
>>> X, y = rng.normal(size=(5, 1, 2, 2)).astype(np.float32), np.array([0, 1, 2, 0, 1])
>>> loss, dlogits = nn.cross_entropy(model(X), y)
>>> opt = nn.SGD(model.parameters(), lr=0.1)
>>> opt.zero_grad()
>>> dX = model.backward(dlogits)
>>> opt.step()
>>> dX.shape, model[1].weight.grad.shape
((5, 1, 2, 2), (3, 4))
"""

from minquant.nn.attention import CausalSelfAttention, RotaryEmbedding
from minquant.nn.embedding import Embedding
from minquant.nn.functional import col2im, cross_entropy, im2col
from minquant.nn.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU
from minquant.nn.mobile import ClippedReLU, GlobalAvgPool2d, ReLU6
from minquant.nn.module import Module, Parameter, Sequential
from minquant.nn.norm import LayerNorm, RMSNorm
from minquant.nn.optim import SGD, Adam, Optimizer, clip_grad_norm
from minquant.nn.transformer import (
    SiLU,
    SwiGLU,
    TransformerBlock,
    TransformerConfig,
    TransformerLM,
)

__all__ = [
    "SGD",
    "Adam",
    "BatchNorm2d",
    "CausalSelfAttention",
    "ClippedReLU",
    "Conv2d",
    "Embedding",
    "Flatten",
    "GlobalAvgPool2d",
    "LayerNorm",
    "Linear",
    "MaxPool2d",
    "Module",
    "Optimizer",
    "Parameter",
    "RMSNorm",
    "ReLU",
    "ReLU6",
    "RotaryEmbedding",
    "Sequential",
    "SiLU",
    "SwiGLU",
    "TransformerBlock",
    "TransformerConfig",
    "TransformerLM",
    "clip_grad_norm",
    "col2im",
    "cross_entropy",
    "im2col",
]
