"""Train the packaged ``small_cnn`` and write ``minquant/data/small_cnn.npz``.

Seeded and deterministic on one machine: the same command reproduces the same weights (up to
BLAS summation order on another CPU). The file holds the float weights, the BatchNorm running
statistics and, as metadata, the test accuracy reached and the training configuration.

Usage: ``python benchmarks/make_pretrained.py [--out PATH]``.

NOTE: OpenBLAS is limited to one thread unless OPENBLAS_NUM_THREADS is already set: the
matrices of this small model are too small to gain from a second thread, and on a busy machine
a spinning BLAS thread costs far more than it brings.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import pathlib
import time

import numpy as np

from minquant.data import load_mnist, random_shift
from minquant.models import SMALL_CNN_CHANNELS, small_cnn
from minquant.train import cosine_schedule, evaluate, fit, save

SEED = 0
EPOCHS = 10
BATCH_SIZE = 32
LR = 2e-3
MAX_SHIFT = 2  # pixels of random translation (data augmentation)
DEFAULT_OUT = pathlib.Path(__file__).parents[1] / "minquant" / "data" / "small_cnn.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    rng = np.random.default_rng(SEED)
    model = small_cnn(rng=rng)
    start = time.perf_counter()
    history = fit(
        model,
        X,
        y,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        rng=rng,
        quiet=args.quiet,
        lr_schedule=cosine_schedule(LR, EPOCHS),
        augment=lambda X_batch, rng: random_shift(X_batch, MAX_SHIFT, rng),
    )
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, X_test, y_test)
    c1, c2 = SMALL_CNN_CHANNELS
    save(
        model,
        args.out,
        test_accuracy=accuracy,
        c1=c1,
        c2=c2,
        seed=SEED,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        max_shift=MAX_SHIFT,
    )
    per_epoch = ", ".join(f"{s:.1f}" for s in history["seconds"])
    print(f"small_cnn(c1={c1}, c2={c2}): test accuracy {accuracy:.4f}")
    print(f"training wall time {seconds:.1f} s ({EPOCHS} epochs: {per_epoch} s)")
    print(f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
