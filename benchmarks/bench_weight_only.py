"""Weight-only int4 GEMV (batch 1) against float32 BLAS sgemv, and the memory bandwidth.

    python benchmarks/bench_weight_only.py            # markdown table, 1 and 2 threads
    python benchmarks/bench_weight_only.py --json     # the same numbers as JSON
    python benchmarks/bench_weight_only.py --cpu-time # 1 thread, process CPU time

Generating a token multiplies a vector by each weight matrix: every weight is read once and
used once, so the time is bounded below by (bytes of weights) / (memory bandwidth). On a
4096 x 4096 matrix:

* ``f32 sgemv``: ``W @ x`` with float32 ``W`` (64 MiB), NumPy's BLAS;
* ``int4 g64`` / ``int8 g64``: :func:`minquant.kernels.gemv.matmul_weight_only` on packed codes
  with one float16 scale per 64 weights (8.5 MiB and 16.5 MiB, symmetric RTN), int4 on the
  fastest path this CPU runs (``"simd"``: explicit vectors);
* ``int4 asym``: the same with a zero point per group (``quantize_weights``' default,
  8.75 MiB), and ``int4 plain``: symmetric int4 forced onto the scalar kernel;
* ``read probe``: a Numba prange sum over a uint8 buffer (bytes read per second), at the
  size of the int4 weights and at 512 MiB (beyond the last-level cache);
* ``copy probe``: ``np.copyto`` of 64 MiB (bytes read + written per second).

Threaded libraries interfere (each leaves worker threads spinning after a call), so each
library runs in its own subprocess, one after the other (``NUMBA_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` set to the thread count); the table reports the median over
``--repeats`` calls (the minimum in brackets). On a busy machine use ``--cpu-time``: one
thread per library, timed by the process's CPU time (the work the call did, whatever else
runs on the cores; memory stalls count, time spent descheduled does not).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

SIZE = 4096
GROUP_SIZE = 64
MIB = 2**20

#: The clock of every timing; ``--cpu-time`` switches it to process CPU time.
CLOCK = {"clock": time.perf_counter}


def timings(fn, repeats: int) -> dict[str, float]:
    """Median and minimum seconds of ``fn()`` over ``repeats`` calls (after two warm-ups)."""
    fn()
    fn()
    times = []
    clock = CLOCK["clock"]
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return {"median": statistics.median(times), "min": min(times)}


def operands(num_bits: int, symmetric: bool = True):
    """A random 4096 x 4096 weight, RTN-quantized per group, packed per row."""
    from minquant.kernels.gemv import pack_weight
    from minquant.llm.weight_only import quantize_rtn

    rng = np.random.default_rng(0)
    w = rng.standard_normal((SIZE, SIZE)).astype(np.float32)  # (out, in)
    codes, scale, zero_point = quantize_rtn(w, num_bits, GROUP_SIZE, symmetric=symmetric)
    packed = pack_weight(codes, num_bits, GROUP_SIZE, signed=symmetric)  # (out, in * b / 8)
    if zero_point is not None:
        zero_point = np.asarray(zero_point).astype(np.uint8)  # (out, G)
    x = rng.standard_normal(SIZE).astype(np.float32)
    return w, packed, scale.astype(np.float16), zero_point, x


def worker_numba(repeats: int) -> dict[str, dict[str, float]]:
    from numba import njit, prange

    from minquant.kernels.gemv import matmul_weight_only

    @njit(parallel=True, cache=True)
    def read_probe(buffer):
        total = 0
        for i in prange(buffer.shape[0]):
            total += buffer[i]
        return total

    results = {}
    cases = {
        "int4": (4, True, None),
        "int4 asym": (4, False, None),
        "int4 plain": (4, True, "plain"),
        "int8": (8, True, None),
    }
    for label, (num_bits, symmetric, path) in cases.items():
        _, packed, scale, zero_point, x = operands(num_bits, symmetric)

        def gemv(x=x, packed=packed, scale=scale, zero_point=zero_point, num_bits=num_bits,
                 symmetric=symmetric, path=path):  # fmt: skip
            # as WeightOnlyLinear calls it: scales validated once, not per token
            return matmul_weight_only(
                x, packed, scale, zero_point, num_bits, GROUP_SIZE, symmetric,
                check_values=False, path=path,
            )  # fmt: skip

        result = timings(gemv, repeats)
        zero_bytes = 0 if zero_point is None else zero_point.nbytes
        result["bytes"] = packed.nbytes + scale.nbytes + zero_bytes
        results[label] = result
    for label, nbytes in (
        ("read int4-size", results["int4"]["bytes"]),
        ("read 512 MiB", 512 * MIB),
    ):
        buffer = np.ones(nbytes // 8, dtype=np.uint64)  # sum 8-byte words: a pure read
        result = timings(lambda buffer=buffer: read_probe(buffer), max(5, repeats // 4))
        result["bytes"] = buffer.nbytes
        results[label] = result
    return results


def worker_numpy(repeats: int) -> dict[str, dict[str, float]]:
    w, _, _, _, x = operands(4)
    results = {"f32 sgemv": timings(lambda: w @ x, repeats)}
    results["f32 sgemv"]["bytes"] = w.nbytes
    src = np.ones(64 * MIB // 4, np.float32)
    dst = np.empty_like(src)
    results["copy 64 MiB"] = timings(lambda: np.copyto(dst, src), max(5, repeats // 4))
    results["copy 64 MiB"]["bytes"] = 2 * src.nbytes  # read + write
    return results


def run_worker(
    kind: str, threads: int, repeats: int, cpu_time: bool
) -> dict[str, dict[str, float]]:
    env = dict(
        os.environ,
        NUMBA_NUM_THREADS=str(threads),
        OPENBLAS_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    command = [sys.executable, __file__, "--worker", kind, "--repeats", str(repeats)]
    command += ["--cpu-time"] if cpu_time else []
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the {kind} worker failed:\n{out.stderr}")
    return json.loads(out.stdout)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| threads | f32 sgemv ms | int4 g64 ms | int4 asym ms | int4 plain ms | int8 g64 ms "
        "| int4 / f32 speed-up | int4 asym / f32 | int4 plain / f32 | int8 / f32 | int4 GB/s "
        "| read probe GB/s (int4-size / 512 MiB) | int4 / probe | copy 64 MiB GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for threads, r in results.items():

        def ms(key: str, r: dict = r) -> str:
            return f"{1e3 * r[key]['median']:.2f} ({1e3 * r[key]['min']:.2f})"

        def gbs(key: str, r: dict = r) -> float:
            return r[key]["bytes"] / r[key]["median"] / 1e9

        f32 = r["f32 sgemv"]["median"]

        def speedup(key: str, r: dict = r, f32: float = f32) -> str:
            return f"{f32 / r[key]['median']:.2f}x"

        lines.append(
            f"| {threads} | {ms('f32 sgemv')} | {ms('int4')} | {ms('int4 asym')} "
            f"| {ms('int4 plain')} | {ms('int8')} | {speedup('int4')} | {speedup('int4 asym')} "
            f"| {speedup('int4 plain')} | {speedup('int8')} | {gbs('int4'):.1f} "
            f"| {gbs('read int4-size'):.1f} / {gbs('read 512 MiB'):.1f} "
            f"| {gbs('int4') / gbs('read int4-size'):.0%} | {gbs('copy 64 MiB'):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between libraries")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cpu-time", action="store_true", help="1 thread, process CPU time")
    parser.add_argument("--worker", choices=["numba", "numpy"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK["clock"] = time.process_time
        args.threads = [1]  # CPU time sums over threads: only meaningful for one
    if args.worker:
        worker = worker_numba if args.worker == "numba" else worker_numpy
        print(json.dumps(worker(args.repeats)))
        return
    load_before = os.getloadavg()
    results = {}
    for threads in args.threads:
        results[threads] = {}
        for kind in ("numpy", "numba"):
            results[threads].update(run_worker(kind, threads, args.repeats, args.cpu_time))
            time.sleep(args.pause)
    if args.json:
        print(json.dumps({"cpu": cpu_model(), "results": results}, indent=2))
        return
    clock = "process CPU time" if args.cpu_time else "wall time"
    from minquant.kernels.gemv import available_paths

    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; {SIZE} x {SIZE}, batch 1; {clock}")
    print(f"int4 paths available: {available_paths()}")
    print(f"load average before / after: {load_before} / {os.getloadavg()}")
    print("median ms over the repeats (minimum in brackets); GB/s from the medians\n")
    print(table(results))


if __name__ == "__main__":
    main()
