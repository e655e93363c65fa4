r"""Training and evaluation loops, and saving weights to ``.npz``.

One training step is the whole story of the float engine:

$$\text{logits} = f(X_{batch}),\quad (L, \partial L/\partial\,\text{logits}) =
\mathrm{cross\_entropy},\quad \texttt{model.backward}(\partial L/\partial\,\text{logits}),
\quad \theta \leftarrow \texttt{opt.step}().$$
"""

import math
import os
import time
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from minquant import nn
from minquant.data import iterate_minibatches

META_PREFIX = "__meta__."


def fit(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = 5,
    batch_size: int = 64,
    optimizer: nn.Optimizer | None = None,
    lr: float = 1e-3,
    rng: np.random.Generator | None = None,
    quiet: bool = False,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` with mini-batch gradient descent on the cross-entropy loss.

    ``optimizer`` defaults to ``Adam(model.parameters(), lr)``. ``rng`` shuffles the data
    each epoch (``None``: an unseeded generator). ``lr_schedule(epoch)``, when given, sets
    the optimizer's learning rate at the start of each epoch (epochs count from 0).
    ``augment(X_batch, rng)``, when given, transforms each training batch (for example
    :func:`minquant.data.random_shift`).
    A tqdm bar shows the epoch, the running loss and accuracy (hidden when ``quiet``).

    Returns the history: per epoch, the mean training ``loss``, the training ``accuracy``
    (measured on the fly, in training mode), ``seconds`` and, when validation data is given,
    ``val_accuracy``.

    >>> from minquant.models import mlp
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 1, 2, 2)).astype(np.float32)
    >>> y = (X.reshape(64, 4).sum(axis=1) > 0).astype(np.int64)
    >>> model = mlp(rng=rng, in_features=4, hidden=(8,), num_classes=2)
    >>> history = fit(model, X, y, epochs=20, batch_size=16, lr=0.01, rng=rng, quiet=True)
    >>> history["loss"][-1] < history["loss"][0], history["accuracy"][-1] > 0.9
    (True, True)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val must be given together (or neither)")
    rng = np.random.default_rng() if rng is None else rng
    optimizer = nn.Adam(model.parameters(), lr=lr) if optimizer is None else optimizer
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "seconds": []}
    if X_val is not None:
        history["val_accuracy"] = []
    num_batches = -(-len(X) // batch_size)
    bar = tqdm(total=epochs * num_batches, disable=quiet, unit="batch")
    for epoch in range(epochs):
        if lr_schedule is not None:
            optimizer.lr = lr_schedule(epoch)
        bar.set_description(f"epoch {epoch + 1}/{epochs}")
        model.train()
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for X_batch, y_batch in iterate_minibatches(X, y, batch_size, rng=rng):
            if augment is not None:
                X_batch = augment(X_batch, rng)
            logits = model(X_batch)  # (B, K)
            loss, dlogits = nn.cross_entropy(logits, y_batch)
            optimizer.zero_grad()
            model.backward(dlogits)
            optimizer.step()
            loss_sum += loss * len(y_batch)
            correct += int((logits.argmax(axis=1) == y_batch).sum())
            seen += len(y_batch)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
        history["seconds"].append(time.perf_counter() - start)
        history["loss"].append(loss_sum / seen)
        history["accuracy"].append(correct / seen)
        if X_val is not None:
            history["val_accuracy"].append(evaluate(model, X_val, y_val))
    bar.close()
    model.eval()
    return history


def cosine_schedule(lr: float, epochs: int) -> Callable[[int], float]:
    r"""Cosine decay of the learning rate from ``lr`` towards 0 over ``epochs`` epochs.

    $$\eta_e = \eta \cdot \tfrac{1}{2}\big(1 + \cos(\pi e / E)\big)$$

    (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts.) Pass it to :func:`fit` as
    ``lr_schedule``.

    >>> schedule = cosine_schedule(0.1, epochs=4)
    >>> [round(schedule(epoch), 4) for epoch in range(4)]
    [0.1, 0.0854, 0.05, 0.0146]
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")

    def schedule(epoch: int) -> float:
        return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))

    return schedule


def predict(model: nn.Module, X: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Forward ``X`` through ``model`` in batches (the model's mode is left unchanged).

    >>> from minquant.models import mlp
    >>> predict(mlp(rng=np.random.default_rng(0)), np.zeros((7, 1, 28, 28)), 3).shape
    (7, 10)
    """
    if len(X) == 0:
        raise ValueError("predict: X is empty")
    outputs = [model(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
    return np.concatenate(outputs)  # (N, K)


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Classification accuracy of ``model`` on ``(X, y)``, computed in eval mode.

    The model's previous mode (train or eval) is restored afterwards.

    >>> from minquant.models import mlp
    >>> X, y = np.zeros((4, 1, 28, 28)), np.array([0, 1, 2, 3])
    >>> evaluate(mlp(rng=np.random.default_rng(0)), X, y)  # one class for all 4 inputs
    0.25
    """
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
    was_training = model.training
    model.eval()
    try:
        logits = predict(model, X, batch_size)  # (N, K)
    finally:
        model.train(was_training)
    return float((logits.argmax(axis=1) == y).mean())


def save(model: nn.Module, path: str | os.PathLike, **metadata: float | int | str) -> None:
    """Save ``model.state_dict()`` (and optional scalar ``metadata``) to a compressed ``.npz``.

    >>> import tempfile, pathlib
    >>> from minquant.models import mlp
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "mlp.npz"
    >>> save(mlp(rng=np.random.default_rng(0)), path, test_accuracy=0.5)
    >>> model = load(mlp(rng=np.random.default_rng(1)), path)
    >>> read_metadata(path)
    {'test_accuracy': 0.5}
    """
    arrays = model.state_dict()
    arrays.update({META_PREFIX + key: np.asarray(value) for key, value in metadata.items()})
    np.savez_compressed(path, **arrays)


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights saved by :func:`save` into ``model`` (keys and shapes must match).

    Returns ``model``. Raises ``ValueError`` naming the file and the mismatching keys or shapes.
    """
    with np.load(path) as npz:
        state = {key: npz[key] for key in npz.files if not key.startswith(META_PREFIX)}
    try:
        model.load_state_dict(state)
    except ValueError as err:
        raise ValueError(f"cannot load {os.fspath(path)!r} into this model: {err}") from None
    return model


def read_metadata(path: str | os.PathLike) -> dict[str, float | int | str]:
    """The scalar metadata stored by :func:`save` (for example the test accuracy)."""
    with np.load(path) as npz:
        return {
            key[len(META_PREFIX) :]: npz[key].item()
            for key in npz.files
            if key.startswith(META_PREFIX)
        }
