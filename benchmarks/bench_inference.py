"""Inference throughput (images/s) on the 1,000 MNIST test images, measured side by side.

Models, all built from the same pretrained ``small_cnn``:

* ``int8 fixedpoint``: the integer-only minquant model (TFLite-style requantization);
* ``int8 float-requant``: the integer-only minquant model with PyTorch-style requantization;
* ``float minquant``: the float32 NumPy model (BatchNorm folded; im2col + BLAS);
* ``torch fbgemm int8``: the same integer weights and quantization parameters as
  ``int8 float-requant``, in ``torch.ao.nn.quantized`` modules
  (:func:`minquant.torch_bridge.to_torch_quantized`, fbgemm: PyTorch's x86 engine on CPUs
  without AVX512-VNNI; skipped when torch is not installed). Its outputs are checked bit for
  bit.

Every model runs once to warm up (Numba compiles), then the models take turns, ``--repeat``
rounds; the best time of each is reported. Also printed: the time per layer of the integer
model. ``--json`` prints the results as JSON instead of tables.

``--gemm vnni`` runs the integer models with :func:`minquant.kernels.vnni.matmul_int8` (the
explicit-SIMD kernel) in place of ``kernels.matmul_int8``, to measure what it would gain before
the layers call it themselves.

Usage: ``python benchmarks/bench_inference.py [--repeat 7] [--json] [--gemm plain|vnni]``
"""

import argparse
import json
import time
import warnings

import numpy as np

from minquant import kernels, models, torch_bridge
from minquant.data import load_mnist
from minquant.kernels import vnni
from minquant.ptq import QuantizedModel, fold_batchnorm, quantize_model


def _time(fn, X) -> float:
    start = time.perf_counter()
    fn(X)
    return time.perf_counter() - start


def layer_times(qmodel: QuantizedModel, X: np.ndarray, repeat: int) -> list[tuple[str, float]]:
    """Best time (s) of each integer step on all of ``X`` at once."""
    best = {}
    for _ in range(repeat):
        x_q = qmodel.quantize(X)
        for i, step in enumerate(qmodel.steps):
            start = time.perf_counter()
            x_q = step.module(x_q)
            elapsed = time.perf_counter() - start
            best[i] = min(best.get(i, np.inf), elapsed)
    return [(repr(step.module).split(",")[0] + ")", best[i]) for i, step in enumerate(qmodel.steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per model")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--gemm", choices=["plain", "vnni"], default="plain", help="int8 GEMM")
    args = parser.parse_args()
    if args.gemm == "vnni":
        # NOTE: the layers call kernels.matmul_int8 at run time, so replacing the module
        # attribute swaps the kernel for this process (same contract, same integers).
        kernels.matmul_int8 = vnni.matmul_int8
    # NOTE: torch 2.13 deprecates its quantized tensors (one UserWarning); they are the baseline.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation", category=UserWarning)

    X_calib, _ = load_mnist("train")
    X, y = load_mnist("test")  # (1000, 1, 28, 28)
    model = models.load_pretrained("small_cnn")
    float_model = fold_batchnorm(model)
    q_fixed = quantize_model(model, X_calib[:1000], requant="fixedpoint")
    q_float = quantize_model(model, X_calib[:1000], requant="float")
    runners = {
        "int8 fixedpoint": q_fixed,
        "int8 float-requant": q_float,
        "float minquant": float_model,
    }
    checks = {}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch_model = torch_bridge.to_torch_quantized(q_float, engine="fbgemm")
        X_t = torch.from_numpy(X)

        def run_torch(_: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return torch_model(X_t).numpy()

        runners["torch fbgemm int8"] = run_torch
        torch_logits = run_torch(X)
        checks["torch_bit_exact"] = bool(np.array_equal(torch_logits, q_float(X)))

    accuracy = {name: float(np.mean(fn(X).argmax(1) == y)) for name, fn in runners.items()}
    best = dict.fromkeys(runners, np.inf)
    for _ in range(args.repeat):
        for name, fn in runners.items():
            best[name] = min(best[name], _time(fn, X))
    ips = {name: len(X) / t for name, t in best.items()}
    ratios = {"int8 fixedpoint / float minquant": ips["int8 fixedpoint"] / ips["float minquant"]}
    ratios["int8 float-requant / float minquant"] = (
        ips["int8 float-requant"] / ips["float minquant"]
    )
    if "torch fbgemm int8" in ips:
        for name in ("int8 fixedpoint", "int8 float-requant", "float minquant"):
            ratios[f"{name} / torch fbgemm int8"] = ips[name] / ips["torch fbgemm int8"]
    per_layer = layer_times(q_fixed, X, args.repeat)
    result = {
        "gemm": args.gemm,
        "images": len(X),
        "images_per_s": ips,
        "accuracy": accuracy,
        "ratios": ratios,
        "checks": checks,
        "int8_fixedpoint_layer_ms": {f"{i}: {n}": 1e3 * t for i, (n, t) in enumerate(per_layer)},
        "nbytes": {"int8": q_fixed.nbytes, "float32": q_fixed.float_nbytes},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"int8 GEMM: {args.gemm}")
    print(f"{'model':<22}{'images/s':>12}{'accuracy':>10}")
    for name in runners:
        print(f"{name:<22}{ips[name]:>12,.0f}{accuracy[name]:>10.3f}")
    print()
    for name, ratio in ratios.items():
        print(f"{name:<42}{ratio:>7.2f}x")
    for name, ok in checks.items():
        print(f"{name}: {ok}")
    print("\nint8 fixedpoint, time per layer (1,000 images):")
    for name, ms in result["int8_fixedpoint_layer_ms"].items():
        print(f"  {name:<40}{ms:>8.2f} ms")


if __name__ == "__main__":
    main()
