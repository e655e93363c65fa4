"""Tokens per second of ``mq.llm.generate`` on tiny_lm: float32 vs W8 g64 vs W4 g64 (RTN).

    python benchmarks/bench_generate.py                 # markdown table
    python benchmarks/bench_generate.py --json          # the same numbers as JSON
    python benchmarks/bench_generate.py --tokens 100 --repeats 7

Each model runs in its own subprocess, one after the other, with one thread
(``NUMBA_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` = 1): a warm-up call
(Numba compiles or loads its cache), then ``--repeats`` greedy generations of ``--tokens``
tokens from a 9-character prompt (no context shift: prompt + tokens <= 128). Each call is
timed by the wall clock and by the process's CPU time (the work it did, whatever else runs
on the cores); the table gives the median (and the best) in tokens per second.

What to expect: decoding reads every Linear weight once per token, so on a large model the
time per token is bounded by (weight bytes) / (memory bandwidth), and 4-bit weights read
about 7x fewer bytes than float32. tiny_lm is *not* such a model: its Linear weights are
3.3 MiB in float32 (0.47 MiB at W4 g64), they stay in the CPU's cache, and one token costs
about 0.9 million multiply-adds spread over 29 small layers plus attention, normalisation,
sampling and Python overhead. Dequantizing int4 codes on the fly then costs more than the
bytes it saves, and the ratio says little about a 7B model.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = "MACBETH:\n"
#: model name -> (bits, group_size) for quantize_weights; None is the float32 model.
MODELS = {"float32": None, "W8 g64": (8, 64), "W4 g64": (4, 64)}


def worker(name: str, tokens: int, repeats: int) -> dict:
    """Time ``generate`` for one model in this process; return its numbers."""
    import minquant as mq
    from minquant import nn
    from minquant.llm.weight_only import WeightOnlyLinear

    lm = mq.models.load_pretrained("tiny_lm")
    if MODELS[name] is not None:
        bits, group_size = MODELS[name]
        lm = mq.llm.quantize_weights(lm, bits=bits, group_size=group_size)
    weight_bytes = 0
    for module in lm.modules():
        if isinstance(module, WeightOnlyLinear):
            weight_bytes += module.nbytes()
        elif isinstance(module, nn.Linear):
            weight_bytes += module.weight.data.nbytes
    text = mq.llm.generate(lm, PROMPT, tokens, temperature=0.0)  # warm-up (and compile)
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        mq.llm.generate(lm, PROMPT, tokens, temperature=0.0)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return {
        "model": name,
        "linear_weight_bytes_per_token": weight_bytes,
        "tokens_per_s_wall_median": tokens / statistics.median(wall),
        "tokens_per_s_wall_best": tokens / min(wall),
        "tokens_per_s_cpu_median": tokens / statistics.median(cpu),
        "tokens_per_s_cpu_best": tokens / min(cpu),
        "text": text,
    }


def run_worker(name: str, tokens: int, repeats: int) -> dict:
    env = dict(
        os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )  # fmt: skip
    command = [sys.executable, __file__, "--worker", name]
    command += ["--tokens", str(tokens), "--repeats", str(repeats)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def table(results: list[dict]) -> str:
    base = results[0]
    lines = [
        "| model | Linear weight bytes / token | tok/s wall median (best) "
        "| tok/s CPU median (best) | CPU speed vs float32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r["tokens_per_s_cpu_median"] / base["tokens_per_s_cpu_median"]
        lines.append(
            f"| {r['model']} | {r['linear_weight_bytes_per_token']:,} "
            f"| {r['tokens_per_s_wall_median']:.0f} ({r['tokens_per_s_wall_best']:.0f}) "
            f"| {r['tokens_per_s_cpu_median']:.0f} ({r['tokens_per_s_cpu_best']:.0f}) "
            f"| {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100, help="tokens per generate call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--worker", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if len(PROMPT) + args.tokens > 128:
        parser.error(f"--tokens must be <= {128 - len(PROMPT)} (no context shift)")
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.repeats)))
        return
    results = []
    for name in MODELS:  # one model at a time, each in its own process
        results.append(run_worker(name, args.tokens, args.repeats))
        time.sleep(1.0)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.tokens} tokens per call, {args.repeats} calls per model, 1 thread\n")
    print(table(results))


if __name__ == "__main__":
    main()
