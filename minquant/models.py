"""Small reference models: a multilayer perceptron, a small CNN, a MobileNet-like CNN and a
tiny character-level language model.

``load_pretrained(name)`` returns a model trained on bundled data (the weights ship with the
package): ``"small_cnn"`` and ``"mobile_cnn"`` on the MNIST subset
(``benchmarks/make_pretrained.py``, ``benchmarks/make_pretrained_mobile.py``), ``"tiny_lm"``
on the Shakespeare corpus (``benchmarks/make_pretrained_lm.py``), so that quantization
experiments need not train a model first.

References:

* A. Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017 (arXiv:1704.04861): the depthwise-separable block.
"""

import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

import numpy as np

from minquant import nn

#: Channel widths of the packaged ``small_cnn`` weights.
SMALL_CNN_CHANNELS = (16, 32)
PRETRAINED = {
    "small_cnn": "data/small_cnn.npz",
    "mobile_cnn": "data/mobile_cnn.npz",
    "tiny_lm": "data/tiny_lm.npz",
}


def small_cnn(
    rng: np.random.Generator | None = None,
    c1: int = SMALL_CNN_CHANNELS[0],
    c2: int = SMALL_CNN_CHANNELS[1],
) -> nn.Sequential:
    """Two Conv-BatchNorm-ReLU-MaxPool blocks and a Linear classifier, for (N, 1, 28, 28).

    Shapes: (N, 1, 28, 28) -> (N, c1, 14, 14) -> (N, c2, 7, 7) -> (N, 10) logits.

    >>> model = small_cnn(rng=np.random.default_rng(0))
    >>> model(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape
    (2, 10)
    >>> sum(p.data.size for p in model.parameters())
    20586
    """
    rng = np.random.default_rng() if rng is None else rng
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, rng=rng),  # (N, c1, 28, 28)
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, c1, 14, 14)
        nn.Conv2d(c1, c2, 3, padding=1, rng=rng),  # (N, c2, 14, 14)
        nn.BatchNorm2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, c2, 7, 7)
        nn.Flatten(),  # (N, c2 * 49)
        nn.Linear(c2 * 7 * 7, 10, rng=rng),  # (N, 10)
    )


def mlp(
    rng: np.random.Generator | None = None,
    hidden: tuple[int, ...] = (128,),
    in_features: int = 28 * 28,
    num_classes: int = 10,
) -> nn.Sequential:
    """Flatten, then Linear-ReLU for each hidden width, then a Linear classifier.

    >>> model = mlp(rng=np.random.default_rng(0), hidden=(32, 16))
    >>> [type(m).__name__ for m in model]
    ['Flatten', 'Linear', 'ReLU', 'Linear', 'ReLU', 'Linear']
    >>> model(np.zeros((3, 1, 28, 28), dtype=np.float32)).shape
    (3, 10)
    """
    rng = np.random.default_rng() if rng is None else rng
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h, rng=rng), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes, rng=rng))
    return nn.Sequential(*layers)


@contextmanager
def _pretrained_path(name: str) -> Iterator[pathlib.Path]:
    """The packaged weight file of the pretrained model ``name``, as a filesystem path."""
    if name not in PRETRAINED:
        raise ValueError(f"name must be one of {sorted(PRETRAINED)}, got {name!r}")
    with resources.as_file(resources.files("minquant").joinpath(PRETRAINED[name])) as path:
        yield path


def load_pretrained(name: str = "small_cnn") -> nn.Module:
    """The packaged float model ``name``, in eval mode.

    ``"small_cnn"`` and ``"mobile_cnn"`` are trained on the bundled MNIST subset; their test
    accuracy is recorded next to the weights (see :func:`pretrained_accuracy`). ``"tiny_lm"``
    is :func:`tiny_lm` trained on ``load_text("train")`` (see :func:`pretrained_val_loss`).

    >>> from minquant.data import load_mnist
    >>> from minquant.train import evaluate
    >>> X, y = load_mnist("test")
    >>> evaluate(load_pretrained(), X, y) == pretrained_accuracy()
    True
    >>> evaluate(load_pretrained("mobile_cnn"), X, y) == pretrained_accuracy("mobile_cnn")
    True
    """
    from minquant.train import load, read_metadata

    with _pretrained_path(name) as path:
        meta = read_metadata(path)
        # NOTE: the rng only fills weights that load() overwrites at once.
        rng = np.random.default_rng(0)
        if name == "mobile_cnn":
            model = mobile_cnn(rng=rng, config=MobileCNNConfig.from_metadata(meta))
        elif name == "tiny_lm":
            model = tiny_lm(_tiny_lm_config(meta), rng=rng)
        else:
            model = small_cnn(rng=rng, c1=meta["c1"], c2=meta["c2"])
        load(model, path)
    return model.eval()


def pretrained_accuracy(name: str = "small_cnn") -> float:
    """Test accuracy (on ``load_mnist("test")``) recorded when the packaged weights were made."""
    from minquant.train import read_metadata

    with _pretrained_path(name) as path:
        return float(read_metadata(path)["test_accuracy"])


# --- mobile_cnn: depthwise-separable blocks ---------------------------------------------------


@dataclass(frozen=True)
class MobileCNNConfig:
    """Widths and strides of :func:`mobile_cnn` (the defaults are the packaged model's)."""

    #: output channels of the 3x3 stem convolution (stride 2: 28x28 -> 14x14)
    stem_channels: int = 16
    #: one (output channels, depthwise stride) pair per depthwise-separable block
    blocks: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 2))
    #: number of classes (outputs of the final Linear layer)
    num_classes: int = 10

    def to_metadata(self) -> dict[str, int | str]:
        """The config as scalar metadata for :func:`minquant.train.save`."""
        blocks = ",".join(f"{c}x{s}" for c, s in self.blocks)
        return {
            "stem_channels": self.stem_channels,
            "blocks": blocks,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_metadata(cls, meta: dict) -> "MobileCNNConfig":
        """The config written by :meth:`to_metadata`.

        >>> MobileCNNConfig.from_metadata(MobileCNNConfig().to_metadata()) == MobileCNNConfig()
        True
        """
        blocks = tuple(
            (int(c), int(s)) for c, s in (b.split("x") for b in str(meta["blocks"]).split(","))
        )
        return cls(int(meta["stem_channels"]), blocks, int(meta["num_classes"]))


def mobile_cnn(
    rng: np.random.Generator | None = None, config: MobileCNNConfig | None = None
) -> nn.Sequential:
    """A MobileNet-like CNN for (N, 1, 28, 28): stem, depthwise-separable blocks, pooling, linear.

    Stem: Conv 3x3 stride 2 -> BatchNorm -> ReLU6. Each block: depthwise Conv 3x3
    (``groups`` = channels) -> BatchNorm -> ReLU6, then pointwise Conv 1x1 -> BatchNorm ->
    ReLU6. Then global average pooling and a Linear classifier. The convolutions have no
    bias (the BatchNorm after each one has it), as in MobileNet.

    Shapes with the default config: (N, 1, 28, 28) -> stem (N, 16, 14, 14) -> (N, 32, 14, 14)
    -> (N, 64, 7, 7) -> (N, 64, 4, 4) -> pool (N, 64) -> (N, 10) logits.

    >>> model = mobile_cnn(rng=np.random.default_rng(0))
    >>> model(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape
    (2, 10)
    >>> sum(p.data.size for p in model.parameters())
    9034
    """
    rng = np.random.default_rng() if rng is None else rng
    config = MobileCNNConfig() if config is None else config
    c = config.stem_channels
    layers: list[nn.Module] = [
        nn.Conv2d(1, c, 3, stride=2, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(c),
        nn.ReLU6(),
    ]
    for out_channels, stride in config.blocks:
        layers += [
            nn.Conv2d(c, c, 3, stride=stride, padding=1, groups=c, bias=False, rng=rng),
            nn.BatchNorm2d(c),
            nn.ReLU6(),
            nn.Conv2d(c, out_channels, 1, bias=False, rng=rng),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        ]
        c = out_channels
    layers += [nn.GlobalAvgPool2d(), nn.Linear(c, config.num_classes, rng=rng)]
    return nn.Sequential(*layers)


# --- tiny_lm: a Llama-style character model ---------------------------------------------------


def tiny_lm(
    config: nn.TransformerConfig | None = None, rng: np.random.Generator | None = None
) -> nn.TransformerLM:
    """A small Llama-style character-level language model (defaults: :class:`TransformerConfig`).

    Four pre-norm blocks of width 128 (4 heads, SwiGLU 384, RoPE, RMSNorm, no biases) over
    the 63-character vocabulary of :data:`minquant.data.VOCAB`, context 128: 869,248
    parameters. Tokens (B, T) -> logits (B, T, 63).

    >>> model = tiny_lm(rng=np.random.default_rng(0))
    >>> model(np.zeros((2, 5), dtype=np.int64)).shape
    (2, 5, 63)
    >>> sum(p.data.size for p in model.parameters())
    869248
    """
    config = nn.TransformerConfig() if config is None else config
    return nn.TransformerLM(config, rng=rng)


def _tiny_lm_config(meta: dict[str, float | int | str]) -> nn.TransformerConfig:
    """The config stored as ``config.<field>`` metadata by the training script."""
    fields = nn.TransformerConfig.__dataclass_fields__
    return nn.TransformerConfig(**{name: meta[f"config.{name}"] for name in fields})


def pretrained_val_loss(name: str = "tiny_lm") -> float:
    """Validation loss (nats per character on ``load_text("val")``) recorded at training."""
    from minquant.train import read_metadata

    with _pretrained_path(name) as path:
        return float(read_metadata(path)["val_loss"])
