"""Seconds per training epoch of ``small_cnn``: minquant (NumPy) vs PyTorch on CPU.

Both train the same model (same initial weights, same batches, Adam) on the 4,000-image
training split. Epochs alternate between the two engines so that both see the same machine
load; the script prints every epoch's wall time (and, as a check on a busy machine, the CPU
time of this process), the median per engine and their ratio.

Usage: ``python benchmarks/bench_train.py [--epochs 3] [--threads 2] [--blas-threads N]``.
``--threads`` goes to ``torch.set_num_threads``; ``--blas-threads`` sets
``OPENBLAS_NUM_THREADS`` for NumPy (default: leave the environment as it is).
"""

import argparse
import os
import sys

# NOTE: OpenBLAS reads its thread count once, when NumPy is first imported, so the option is
# parsed before any import of NumPy.
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=3, help="timed epochs per engine")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
parser.add_argument("--blas-threads", type=int, default=None, help="OPENBLAS_NUM_THREADS")
args = parser.parse_args()
if args.blas_threads is not None:
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minquant import nn  # noqa: E402
from minquant.data import load_mnist  # noqa: E402
from minquant.models import small_cnn  # noqa: E402

try:
    import torch
except ImportError:
    sys.exit("bench_train.py compares against PyTorch: pip install torch")


def torch_twin(model: nn.Sequential) -> "torch.nn.Sequential":
    """The same small CNN in torch.nn, with the same initial weights."""
    c1, c2 = model[0].out_channels, model[4].out_channels
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(1, c1, 3, padding=1),
        torch.nn.BatchNorm2d(c1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(c1, c2, 3, padding=1),
        torch.nn.BatchNorm2d(c2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(c2 * 7 * 7, 10),
    )
    state = {key: torch.from_numpy(value) for key, value in model.state_dict().items()}
    twin.load_state_dict(state, strict=False)  # torch also has num_batches_tracked
    return twin


def epoch_minquant(model, opt, X, y, order, batch_size) -> tuple[float, float]:
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for i in range(0, len(X), batch_size):
        idx = order[i : i + batch_size]
        _, dlogits = nn.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        model.backward(dlogits)
        opt.step()
    return time.perf_counter() - start, time.process_time() - cpu_start


def epoch_torch(model, opt, X, y, order, batch_size) -> tuple[float, float]:
    start, cpu_start = time.perf_counter(), time.process_time()
    model.train()
    for i in range(0, len(X), batch_size):
        idx = order[i : i + batch_size]
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    torch.set_num_threads(args.threads)
    X, y = load_mnist("train")
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(0)
    model = small_cnn(rng=rng)
    twin = torch_twin(model)
    opt = nn.Adam(model.parameters(), lr=1e-3)
    opt_t = torch.optim.Adam(twin.parameters(), lr=1e-3)
    times: dict[str, list[float]] = {"minquant": [], "torch": []}
    # one untimed warm-up epoch each (first-touch memory, torch's lazy initialisation)
    for epoch in range(args.epochs + 1):
        order = rng.permutation(len(X))
        t_mq, cpu_mq = epoch_minquant(model, opt, X, y, order, args.batch_size)
        order_t = torch.from_numpy(order)
        t_torch, cpu_torch = epoch_torch(twin, opt_t, X_t, y_t, order_t, args.batch_size)
        tag = "warm-up" if epoch == 0 else f"epoch {epoch}"
        print(
            f"{tag:>8}: minquant {t_mq:6.2f} s (cpu {cpu_mq:6.2f} s)   "
            f"torch {t_torch:6.2f} s (cpu {cpu_torch:6.2f} s)"
        )
        if epoch > 0:
            times["minquant"].append(t_mq)
            times["torch"].append(t_torch)
    mq, tt = statistics.median(times["minquant"]), statistics.median(times["torch"])
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(
        f"small_cnn, batch {args.batch_size}, {len(X)} images/epoch; torch threads "
        f"{torch.get_num_threads()}, OPENBLAS_NUM_THREADS={blas}"
    )
    print(f"median seconds/epoch: minquant {mq:.2f}, torch {tt:.2f}, ratio {mq / tt:.2f}x")


if __name__ == "__main__":
    main()
