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

Every model runs once to warm up (Numba compiles); then one library at a time: each model runs
all its ``--repeat`` rounds, then the benchmark pauses 0.5 s (threaded libraries keep their
workers spinning for a while after a call and would slow the next one, see DESIGN.md). The
best time of each is reported, wall time or, with ``--cpu-time``, the CPU time of the process
(the work done, whatever else runs on a shared machine; equal to wall time only with one
thread). Also printed: the time per layer of both integer models, and the load average.
``--json`` prints the results as JSON instead of tables.

``--int8-path plain|avx2|vnni512`` sets ``MINQUANT_INT8_PATH`` before the models are built: the
inner loop the integer layers run (:func:`minquant.qnn.layers.int8_path`); by default the
fastest one this CPU has. Threads come from the environment (``NUMBA_NUM_THREADS``,
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``) and are printed.

Usage: ``python benchmarks/bench_inference.py [--repeat 7] [--json] [--cpu-time]
[--int8-path plain|avx2|vnni512]``
"""

import argparse
import json
import os
import time
import warnings

import numba
import numpy as np

from minquant import models, torch_bridge
from minquant.data import load_mnist
from minquant.kernels import vnni
from minquant.ptq import QuantizedModel, fold_batchnorm, quantize_model

#: Seconds of rest after each library's repeats (its worker threads go idle).
PAUSE_S = 0.5


def best_time(fn, X: np.ndarray, repeat: int, clock) -> float:
    """Best of ``repeat`` timed calls ``fn(X)`` (seconds, on ``clock``), then a pause."""
    best = np.inf
    for _ in range(repeat):
        start = clock()
        fn(X)
        best = min(best, clock() - start)
    time.sleep(PAUSE_S)
    return best


def layer_times(
    qmodel: QuantizedModel, X: np.ndarray, repeat: int, clock
) -> list[tuple[str, float]]:
    """Best time (s) of the input quantization and of each integer step, on all of ``X``."""
    names = ["Quantize"] + [type(step.module).__name__ for step in qmodel.steps]
    best = np.full(len(names), np.inf)
    for _ in range(repeat):
        start = clock()
        x_q = qmodel.quantize(X)
        best[0] = min(best[0], clock() - start)
        for i, step in enumerate(qmodel.steps, start=1):
            start = clock()
            x_q = step.module(x_q)
            best[i] = min(best[i], clock() - start)
    time.sleep(PAUSE_S)
    return list(zip(names, best.tolist(), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds per model")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU, not wall clock")
    parser.add_argument(
        "--int8-path", choices=vnni.PATHS, default=None, help="the layers' int8 inner loop"
    )
    args = parser.parse_args()
    if args.int8_path is not None:
        # NOTE: read when a layer is built (minquant.qnn.layers.int8_path), so set it first.
        os.environ["MINQUANT_INT8_PATH"] = args.int8_path
    clock = time.process_time if args.cpu_time else time.perf_counter
    # NOTE: torch 2.13 deprecates its quantized tensors (one UserWarning); they are the baseline.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation", category=UserWarning)

    X_calib, _ = load_mnist("train")
    X, y = load_mnist("test")  # (1000, 1, 28, 28)
    model = models.load_pretrained("small_cnn")
    float_model = fold_batchnorm(model)
    q_fixed = quantize_model(model, X_calib[:1000], requant="fixedpoint")
    q_float = quantize_model(model, X_calib[:1000], requant="float")
    quantized = {"int8 fixedpoint": q_fixed, "int8 float-requant": q_float}
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
    load_before = os.getloadavg()[0]
    best = {name: best_time(fn, X, args.repeat, clock) for name, fn in runners.items()}
    ips = {name: len(X) / t for name, t in best.items()}
    ratios = {"int8 fixedpoint / float minquant": ips["int8 fixedpoint"] / ips["float minquant"]}
    ratios["int8 float-requant / float minquant"] = (
        ips["int8 float-requant"] / ips["float minquant"]
    )
    if "torch fbgemm int8" in ips:
        for name in ("int8 fixedpoint", "int8 float-requant", "float minquant"):
            ratios[f"{name} / torch fbgemm int8"] = ips[name] / ips["torch fbgemm int8"]
    per_layer = {name: layer_times(q, X, args.repeat, clock) for name, q in quantized.items()}
    threads = {"numba": numba.get_num_threads()}
    if torch is not None:
        threads["torch"] = torch.get_num_threads()
    result = {
        "int8_path": [getattr(s.module, "int8_path", None) for s in q_fixed.steps],
        "clock": "cpu" if args.cpu_time else "wall",
        "threads": threads,
        "load_average": [load_before, os.getloadavg()[0]],
        "images": len(X),
        "images_per_s": ips,
        "accuracy": accuracy,
        "ratios": ratios,
        "checks": checks,
        "layer_ms": {
            name: {f"{i}: {n}": 1e3 * t for i, (n, t) in enumerate(rows)}
            for name, rows in per_layer.items()
        },
        "nbytes": {"int8": q_fixed.nbytes, "float32": q_fixed.float_nbytes},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"int8 path: {result['int8_path']}, {result['clock']} time, threads {threads}, "
        f"load average {load_before:.1f} -> {result['load_average'][1]:.1f}"
    )
    print(f"{'model':<22}{'images/s':>12}{'accuracy':>10}")
    for name in runners:
        print(f"{name:<22}{ips[name]:>12,.0f}{accuracy[name]:>10.3f}")
    print()
    for name, ratio in ratios.items():
        print(f"{name:<42}{ratio:>7.2f}x")
    for name, ok in checks.items():
        print(f"{name}: {ok}")
    print(f"\ntime per layer, ms ({len(X):,} images at once):")
    print(f"  {'layer':<26}" + "".join(f"{name:>20}" for name in quantized))
    layer_names = list(result["layer_ms"]["int8 fixedpoint"])
    for row in layer_names:
        cells = "".join(f"{result['layer_ms'][name][row]:>20.2f}" for name in quantized)
        print(f"  {row:<26}{cells}")


if __name__ == "__main__":
    main()
