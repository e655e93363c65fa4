"""GPU throughput, measured side by side in one run: matmuls by number format, and the CNN.

Rows, on the current CUDA device:

* square matmuls ``n x n @ n x n`` for n = 4096 and 8192 in float32 (TF32 off), TF32,
  bfloat16, float16 and int8 (``torch._int_mm``: int8 inputs, exact int32 accumulator);
  throughput in TFLOP/s (TOP/s for int8), counting ``2 n^3`` operations;
* inference of the packaged ``small_cnn`` in images/s for float32, TF32, bfloat16, float16
  and its fake-quant (W8A8) twin made by ``torch_bridge.to_torch_qat``, at a batch of 4096
  images of 28x28.

Each case runs a few warm-up iterations, then CUDA events time ``--iters`` iterations; the
best of ``--repeat`` rounds is kept. The script prints a markdown table (and the card's
name); without a GPU (or without torch) it says so and exits with status 0. Under 3 minutes
on a recent data-centre GPU.

Usage: ``python benchmarks/bench_gpu.py [--iters 20] [--repeat 3]``
"""

import argparse
import copy
import sys
from collections.abc import Callable

import numpy as np

MATMUL_SIZES = (4096, 8192)
CNN_BATCH = 4096


def time_cuda(torch, fn: Callable[[], object], iters: int, repeat: int) -> float:
    """Best mean seconds per call of ``fn`` over ``repeat`` rounds of ``iters`` calls."""
    for _ in range(3):  # warm-up: kernels selected, caches filled
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / iters)
    return best


def matmul_rows(torch, iters: int, repeat: int) -> list[tuple[str, str, float]]:
    """(format, size, TFLOP/s) for every matmul case."""
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in MATMUL_SIZES:
        a = torch.randn(n, n, device="cuda", generator=gen)
        b = torch.randn(n, n, device="cuda", generator=gen)
        a8 = torch.randint(-128, 128, (n, n), device="cuda", dtype=torch.int8, generator=gen)
        b8 = torch.randint(-128, 128, (n, n), device="cuda", dtype=torch.int8, generator=gen)
        cases = [
            ("float32", False, a, b, torch.matmul),
            ("TF32", True, a, b, torch.matmul),
            ("bfloat16", False, a.bfloat16(), b.bfloat16(), torch.matmul),
            ("float16", False, a.half(), b.half(), torch.matmul),
            ("int8 (_int_mm)", False, a8, b8, torch._int_mm),
        ]
        for name, tf32, a_d, b_d, op in cases:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            seconds = time_cuda(torch, lambda a_d=a_d, b_d=b_d, op=op: op(a_d, b_d), iters, repeat)
            rows.append((name, f"{n}", 2 * n**3 / seconds / 1e12))
        torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def cnn_rows(torch, iters: int, repeat: int) -> list[tuple[str, float]]:
    """(model, images/s) for the packaged CNN in each format and the W8A8 fake-quant model."""
    from minquant import qat, torch_bridge
    from minquant.data import load_mnist
    from minquant.models import load_pretrained

    model = load_pretrained("small_cnn")
    X, _ = load_mnist("test")
    reps = -(-CNN_BATCH // len(X))
    X_batch = torch.from_numpy(np.concatenate([X] * reps)[:CNN_BATCH]).cuda()  # (B, 1, 28, 28)
    qat_model = qat.prepare_qat(model, weight_bits=8, act_bits=8)
    qat_model(X[:500])  # one observation sets every range
    qat_model.eval()
    float_model = torch_bridge.to_torch(model).eval()
    fake_quant_model = torch_bridge.to_torch_qat(qat_model)
    cases = [
        ("float32", float_model, torch.float32, False),
        ("TF32", float_model, torch.float32, True),
        ("bfloat16", float_model, torch.bfloat16, False),
        ("float16", float_model, torch.float16, False),
        ("fake-quant W8A8 (float32)", fake_quant_model, torch.float32, False),
    ]
    rows = []
    for name, net, dtype, tf32 in cases:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        net_d = copy.deepcopy(net).to(device="cuda", dtype=dtype)  # (a copy per format)
        x = X_batch.to(dtype)
        with torch.no_grad():
            seconds = time_cuda(torch, lambda net_d=net_d, x=x: net_d(x), iters, repeat)
        rows.append((name, CNN_BATCH / seconds))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="timed calls per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print('no GPU measured: PyTorch is not installed (pip install "minquant[torch]")')
        return 0
    if not torch.cuda.is_available():
        print(f"no GPU: torch {torch.__version__} sees no CUDA device; nothing to measure")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| matmul (n x n @ n x n) | n | TFLOP/s (TOP/s for int8) |")
    print("|---|---:|---:|")
    for name, n, tflops in matmul_rows(torch, args.iters, args.repeat):
        print(f"| {name} | {n} | {tflops:,.1f} |")
    print(f"\n| small_cnn inference, batch {CNN_BATCH} | images/s |")
    print("|---|---:|")
    for name, images_per_s in cnn_rows(torch, args.iters, args.repeat):
        print(f"| {name} | {images_per_s:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
