"""int8 GEMM throughput: minquant's Numba kernel against the honest baselines, side by side.

    python benchmarks/bench_matmul.py               # markdown table
    python benchmarks/bench_matmul.py --json        # the same numbers as JSON

GOP/s counts 2*M*N*K operations (a multiply and an add) for every method. All methods run in
one process, one library at a time: a warm-up call, ``--repeats`` timed calls, then a pause of
``--pause`` seconds so that its worker threads stop spinning before the next library starts
(see DESIGN.md). The median time is reported. Methods:

* ``matmul_int8``: :func:`minquant.kernels.matmul_int8` (int8 x int8 -> int32, exact);
* ``vnni``: :func:`minquant.kernels.vnni.matmul_int8`, the explicit-SIMD kernel on the fastest path
  this CPU has (``vpdpbusd`` with AVX-512 VNNI), packing of both operands included;
* ``vnni packed``: :func:`minquant.kernels.vnni.matmul_u8s8` on uint8 activations (A + 128) and B
  packed once beforehand, as a layer with packed weights calls it;
* ``f32 BLAS``: ``np.matmul`` on float32 (not exact beyond 2**24, the usual yardstick);
* ``f64 BLAS exact``: int8 -> float64, ``np.matmul``, -> int32 (exact, conversions included);
* ``NumPy int32``: ``np.matmul`` on int32, which NumPy runs without BLAS;
* ``torch._int_mm``: PyTorch's int8 GEMM on the CPU (oneDNN), when torch is installed;
* ``torch f32``: ``torch.mm`` on float32, for reference (another BLAS).
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from minquant import kernels
from minquant.kernels import vnni

#: small_cnn's layers on a batch of 100 MNIST images: input shape and GEMM shape (M, K, N).
#: A 3x3 convolution with padding 1 is im2col (M = N*H*W rows of K = C*9) and a GEMM.
LAYERS = {
    "conv1 3x3, 1->16": ((100, 1, 28, 28), (100 * 28 * 28, 9, 16)),
    "conv2 3x3, 16->32": ((100, 16, 14, 14), (100 * 14 * 14, 144, 32)),
    "linear 1568->10": ((100, 1568), (100, 1568, 10)),
}

#: Clock used for every timing; ``--cpu-time`` switches to process CPU time (see main).
CLOCK = {"clock": time.perf_counter}

#: Seconds to wait after each method's repeats (``--pause``).
PAUSE = {"seconds": 0.5}

#: NumPy's int32 matmul is ~1000x slower than BLAS: fewer repeats, and only up to this size.
INT32_MAX_SIZE = 1024


def cpu_info() -> dict[str, object]:
    """CPU model and the SIMD features that decide which int8 instructions exist."""
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": model, "cores": os.cpu_count(), "simd": [f for f in wanted if f in flags]}


def environment() -> dict[str, object]:
    import numba

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    env = {
        "cpu": cpu_info(),
        "numpy": np.__version__,
        "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "vnni_path": vnni.select_path(),
        "load_average_before": os.getloadavg()[0],
    }
    # NOTE: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set, pick an older OpenBLAS kernel and
    # slow the float baselines down: report them instead of hiding them.
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS"):
        env[name] = os.environ.get(name)
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        env["torch"] = None
    return env


def methods(a_q: np.ndarray, b_q: np.ndarray) -> dict[str, object]:
    """name -> zero-argument callable computing a_q @ b_q (M, N)."""
    a32, b32 = a_q.astype(np.float32), b_q.astype(np.float32)
    a_i32, b_i32 = a_q.astype(np.int32), b_q.astype(np.int32)
    a_u8, packed = (a_q.astype(np.int16) + 128).astype(np.uint8), vnni.pack_b(b_q)
    out = {
        "matmul_int8": lambda: kernels.matmul_int8(a_q, b_q),
        "vnni": lambda: vnni.matmul_int8(a_q, b_q),
        "vnni packed": lambda: vnni.matmul_u8s8(a_u8, packed, zero_point=128),
        "f32 BLAS": lambda: a32 @ b32,
        "f64 BLAS exact": lambda: (a_q.astype(np.float64) @ b_q.astype(np.float64)).astype(
            np.int32
        ),
    }
    if a_q.shape[0] <= INT32_MAX_SIZE:
        out["NumPy int32"] = lambda: a_i32 @ b_i32
    try:
        import torch
    except ImportError:
        return out
    ta, tb = torch.from_numpy(a_q), torch.from_numpy(b_q)
    ta32, tb32 = ta.float(), tb.float()
    out["torch._int_mm"] = lambda: torch._int_mm(ta, tb)
    out["torch f32"] = lambda: torch.mm(ta32, tb32)
    return out


def bench_size(n: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    """Median GOP/s of every method on an (n, n) @ (n, n) product."""
    a_q = rng.integers(-128, 128, (n, n)).astype(np.int8)
    b_q = rng.integers(-128, 128, (n, n)).astype(np.int8)
    exact = kernels.matmul_int8_ref(a_q, b_q) if n <= 512 else None
    funcs = methods(a_q, b_q)
    got = funcs["matmul_int8"]()  # also compiles the kernel (or loads it from the cache)
    want = funcs["f64 BLAS exact"]()
    if exact is not None:
        np.testing.assert_array_equal(want, exact)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(funcs["vnni"](), want)
    np.testing.assert_array_equal(funcs["vnni packed"](), want)
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for name, f in funcs.items():  # one library at a time, then a pause
        f()  # warm-up: thread pools, caches
        # NumPy int32 takes seconds per call at 1024: a few repeats are enough
        for _ in range(max(1, repeats // 5) if name == "NumPy int32" else repeats):
            start = CLOCK["clock"]()
            f()
            times[name].append(CLOCK["clock"]() - start)
        time.sleep(PAUSE["seconds"])
    ops = 2.0 * n**3
    return {name: ops / statistics.median(t) / 1e9 for name, t in times.items()}


def _median_ms(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = CLOCK["clock"]()
        f()
        times.append(CLOCK["clock"]() - start)
    return 1e3 * statistics.median(times)


def bench_layers(repeats: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Median milliseconds of each step of a quantized layer, next to the float32 GEMM."""
    out = {}
    for name, (x_shape, (m, k, n)) in LAYERS.items():
        a_q = rng.integers(-128, 128, (m, k)).astype(np.int8)
        w_q = rng.integers(-127, 128, (n, k)).astype(np.int8)  # (N, K), PyTorch layout
        a32, w32 = a_q.astype(np.float32), w_q.astype(np.float32)
        acc = kernels.matmul_int8(a_q, w_q.T)  # (M, N)
        bias_q = rng.integers(-1000, 1000, n).astype(np.int32)
        multiplier, shift = np.full(n, 1 << 30), np.full(n, -10)
        acc_scale = np.full(n, 1e-4, dtype=np.float32)
        steps = {
            "matmul_int8": lambda a_q=a_q, w_q=w_q: kernels.matmul_int8(a_q, w_q.T),
            "f32 BLAS": lambda a32=a32, w32=w32: a32 @ w32.T,
            "requantize_fixedpoint": lambda acc=acc, b=bias_q, m_=multiplier, s_=shift: (
                kernels.requantize_fixedpoint(acc, b, m_, s_, 0, -128, 127)
            ),
            "requantize_float": lambda acc=acc, s_=acc_scale: kernels.requantize_float(
                acc, None, s_, 0.05, 0, -128, 127
            ),
        }
        if len(x_shape) == 4:
            x_q = rng.integers(-128, 128, x_shape).astype(np.int8)  # (N, C, H, W)
            steps["im2col_int8"] = lambda x_q=x_q: kernels.im2col_int8(x_q, 3, 1, 1, 0)
        for f in steps.values():
            f()  # compile or load from the cache
        out[name] = {step: _median_ms(f, repeats) for step, f in steps.items()}
        # Bytes each GEMM must at least move: int8 in + int32 out, versus float32 in and out.
        out[name]["MB int8 GEMM"] = (m * k + k * n + 4 * m * n) / 1e6
        out[name]["MB f32 GEMM"] = 4 * (m * k + k * n + m * n) / 1e6
    return out


def ratios(gops: dict[str, float]) -> dict[str, float]:
    ours = gops["matmul_int8"]
    out = {"int8 / f32 BLAS": ours / gops["f32 BLAS"]}
    if "NumPy int32" in gops:
        out["int8 / NumPy int32"] = ours / gops["NumPy int32"]
    if "torch._int_mm" in gops:
        out["int8 / torch._int_mm"] = ours / gops["torch._int_mm"]
    out["vnni / f32 BLAS"] = gops["vnni"] / gops["f32 BLAS"]
    if "torch._int_mm" in gops:
        out["vnni / torch._int_mm"] = gops["vnni"] / gops["torch._int_mm"]
    return out


def markdown(env: dict[str, object], results: dict[int, dict[str, float]]) -> str:
    names = list(next(iter(results.values())))
    ratio_names = list(ratios(results[max(results)]))
    lines = [
        "| size | " + " | ".join(names) + " | " + " | ".join(ratio_names) + " |",
        "|---:" * (1 + len(names) + len(ratio_names)) + "|",
    ]
    for n, gops in results.items():
        cells = [f"{gops[k]:.1f}" if k in gops else "-" for k in names]
        r = ratios(gops)
        cells += [f"{r[k]:.2f}x" if k in r else "-" for k in ratio_names]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    cpu = env["cpu"]
    lines += [
        "",
        f"GOP/s (2*n^3 / median {env['clock']}); ratios are matmul_int8 over the named method.",
        f"CPU: {cpu['model']}, {cpu['cores']} cores, SIMD: {', '.join(cpu['simd'])}; "
        f"NumPy {env['numpy']} ({env['blas']}), Numba {env['numba']} "
        f"({env['numba_threads']} threads, vnni path {env['vnni_path']}), torch {env['torch']}"
        + (f" ({env['torch_cpu_capability']})" if env["torch"] else "")
        + f"; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}, "
        f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']}; load average "
        f"{env['load_average_before']:.1f} -> {env['load_average_after']:.1f}.",
    ]
    return "\n".join(lines)


def markdown_layers(layers: dict[str, dict[str, float]]) -> str:
    steps = ["im2col_int8", "matmul_int8", "requantize_fixedpoint", "requantize_float"]
    steps += ["f32 BLAS", "MB int8 GEMM", "MB f32 GEMM"]
    lines = [
        "| layer (batch 100) | " + " | ".join(steps) + " |",
        "|---" + "|---:" * len(steps) + "|",
    ]
    for name, row in layers.items():
        cells = [f"{row[s]:.2f}" if s in row else "-" for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Milliseconds (median); the last two columns are the megabytes each GEMM moves.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between libraries")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time instead of wall time: on a busy machine, with one "
        "thread everywhere (OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=NUMBA_NUM_THREADS=1), this "
        "measures the work of each method rather than its share of the cores",
    )
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK["clock"] = time.process_time
    PAUSE["seconds"] = args.pause
    rng = np.random.default_rng(0)
    env = environment()
    env["clock"] = "process CPU time" if args.cpu_time else "wall time"
    results = {n: bench_size(n, args.repeats, rng) for n in args.sizes}
    layers = {} if args.no_layers else bench_layers(args.repeats, rng)
    env["load_average_after"] = os.getloadavg()[0]
    if args.json:
        report = {
            "environment": env,
            "gops": {str(n): r for n, r in results.items()},
            "ratios": {str(n): ratios(r) for n, r in results.items()},
            "layers_ms": layers,
        }
        print(json.dumps(report, indent=2))
    else:
        print(markdown(env, results))
        if layers:
            print()
            print(markdown_layers(layers))


if __name__ == "__main__":
    main()
