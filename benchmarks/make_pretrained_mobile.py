"""Train the packaged ``mobile_cnn`` and write ``minquant/data/mobile_cnn.npz``.

Seeded and deterministic: the same command on the same machine reproduces the same weights
bit for bit (checked by running it twice and comparing the files' arrays); another CPU or BLAS
kernel may differ in the last bits of float32 sums. Training uses minquant's own engine and
``nn.Adam`` through :func:`minquant.train.fit`. The file holds the float weights, the BatchNorm
running statistics and, as metadata, the test accuracy reached, the architecture
(:class:`minquant.models.MobileCNNConfig`) and the training configuration.

Usage: ``python benchmarks/make_pretrained_mobile.py [--out PATH] [--quiet]``.

NOTE: OpenBLAS is limited to one thread unless OPENBLAS_NUM_THREADS is already set: one
thread makes every float32 sum run in one fixed order (bit-for-bit reproducible), and the
matrices of this small model are too small to gain from a second thread.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import pathlib
import time

import numpy as np

from minquant.data import load_mnist, random_shift
from minquant.models import MobileCNNConfig, mobile_cnn
from minquant.train import cosine_schedule, evaluate, fit, save

SEED = 0
EPOCHS = 20
BATCH_SIZE = 32
LR = 2e-3
MAX_SHIFT = 2  # pixels of random translation (data augmentation)
DEFAULT_OUT = pathlib.Path(__file__).parents[1] / "minquant" / "data" / "mobile_cnn.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    X, y = load_mnist("train")
    X_test, y_test = load_mnist("test")
    rng = np.random.default_rng(SEED)
    config = MobileCNNConfig()
    model = mobile_cnn(rng=rng, config=config)
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
    save(
        model,
        args.out,
        test_accuracy=accuracy,
        **config.to_metadata(),
        seed=SEED,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        lr=LR,
        max_shift=MAX_SHIFT,
    )
    params = sum(p.data.size for p in model.parameters())
    per_epoch = ", ".join(f"{s:.1f}" for s in history["seconds"])
    print(f"mobile_cnn({config}): {params} parameters, test accuracy {accuracy:.4f}")
    print(f"training wall time {seconds:.1f} s ({EPOCHS} epochs: {per_epoch} s)")
    print(f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
