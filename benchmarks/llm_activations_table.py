"""Perplexity of tiny_lm with quantized activations and KV caches (docs/results.md).

Rows: float, W8A8 static per-tensor, dynamic per-token, LLM.int8(), SmoothQuant (alpha 0.5
and the best alpha of a sweep), KV8, KV4, KV4 with KIVI's per-channel keys; each on the
packaged model and on its variant with a **synthetic** outlier channel
(``inject_outlier_channel``, channel 0, factor 32: same float function). Every integer run
is compared with its fake-quant simulation (same qparams; products in float64, one cast to
float32, as the integer epilogue) and with the naive simulation (products in float32): the
fraction of equal next-token argmaxes.

``--diagnose`` prints instead, per configuration and Linear (in the order they run), the
fraction of input codes that differ between the integer run and each simulation
(``code_mismatch``: where the first difference arises and how it grows), and the fraction
of float32 outputs that differ when the integer run's input goes through both layers.

Calibration (static ranges, SmoothQuant scales) uses 16 windows of the training text; the
sweep picks alpha by perplexity on 16 *other* training windows, never on the evaluation text.

    PYTHONPATH=. python benchmarks/llm_activations_table.py            # 16,385 val tokens
    PYTHONPATH=. python benchmarks/llm_activations_table.py --tokens 4097
    PYTHONPATH=. python benchmarks/llm_activations_table.py --model synthetic  # one half
    PYTHONPATH=. python benchmarks/llm_activations_table.py --diagnose --tokens 2049
    PYTHONPATH=. python benchmarks/llm_activations_table.py --kv-only --model tiny_lm

Rows are printed as they are measured (a table row each), then the whole table.
"""

import argparse
import math
import time

import numpy as np

import minquant as mq
from minquant import nn
from minquant.llm.activations import capture_linear_inputs, inject_outlier_channel
from minquant.llm.kv_cache import KVQuantizedLM
from minquant.llm.w8a8 import (
    W8A8Linear,
    code_mismatch,
    float_column_fraction,
    quantize_activations,
)

KIVI_GROUP = 32  # tokens per group of per-channel key scales
KV_CONFIGS = (
    ("KV8 (per head, per token)", 8, "token"),
    ("KV4 (per head, per token)", 4, "token"),
    (f"KV4 KIVI (keys per channel, groups of {KIVI_GROUP}; values per token)", 4, "channel"),
)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CONTEXT = 128
DIAGNOSED = (
    ("W8A8 static per-tensor", "static", {}),
    ("W8A8 dynamic per-token", "dynamic", {}),
    ("LLM.int8() (threshold 6)", "llm_int8", {}),
    ("SmoothQuant a=0.5 + static", "smoothquant", {"alpha": 0.5}),
)


def windows(tokens: np.ndarray) -> np.ndarray:
    n = (len(tokens) - 1) // CONTEXT
    return tokens[np.arange(n)[:, None] * CONTEXT + np.arange(CONTEXT + 1)]  # (n, 129)


def evaluate(model: nn.Module, win: np.ndarray, batch: int = 16) -> tuple[float, np.ndarray]:
    """Perplexity (as mq.llm.perplexity) and the argmax of every position."""
    total, argmax = 0.0, []
    for i in range(0, len(win), batch):
        w = win[i : i + batch]  # (b, 129)
        logits = model(w[:, :-1])  # (b, 128, vocab)
        targets = w[:, 1:].reshape(-1)
        loss, _ = nn.cross_entropy(logits.reshape(len(targets), -1), targets)
        total += loss * len(targets)
        argmax.append(logits.argmax(axis=-1).reshape(-1))
    return math.exp(total / win[:, 1:].size), np.concatenate(argmax)


def format_row(row: tuple, ppl_float: float) -> str:
    """One markdown table row: model, configuration, perplexity, change, simulations."""
    label, name, ppl, sim, note = row
    rel = f"{100 * (ppl / ppl_float - 1):+.2f}%"
    sim_text = ["-", "-", "-"]
    if sim is not None:
        sim_text = [f"{sim[0]:.4f}", f"{100 * sim[1]:.2f}%", f"{100 * sim[2]:.2f}%"]
    extra = f" ({note})" if note else ""
    return f"| {label} | {name}{extra} | {ppl:.4f} | {rel} | {' | '.join(sim_text)} |"


def w8a8_configs(best: float) -> list[tuple[str, str, dict]]:
    """(row name, quantize_activations mode, keyword arguments) of the W8A8 rows."""
    return [
        ("W8A8 static per-tensor", "static", {}),
        ("W8A8 dynamic per-token", "dynamic", {}),
        ("LLM.int8() (threshold 6)", "llm_int8", {}),
        ("SmoothQuant a=0.5 + static", "smoothquant", {"alpha": 0.5}),
        (f"SmoothQuant a={best} (best) + static", "smoothquant", {"alpha": best}),
    ]


def sweep_alphas(model: nn.Module, calib: np.ndarray, sweep: np.ndarray, label: str) -> dict:
    """SmoothQuant perplexity on the selection windows for every alpha of ALPHAS."""
    ppl_sweep = {}
    for alpha in ALPHAS:
        q = quantize_activations(model, "smoothquant", calib, alpha=alpha)
        ppl_sweep[alpha] = evaluate(q, sweep)[0]
    best = min(ALPHAS, key=lambda a: ppl_sweep[a])
    sweep_text = ", ".join(f"{a}: {p:.3f}" for a, p in ppl_sweep.items())
    print(f"{label}: SmoothQuant sweep on train windows {{{sweep_text}}}, best {best}", flush=True)
    return ppl_sweep


def diagnose(model: nn.Module, mode: str, calib: np.ndarray, val: np.ndarray, **kw) -> None:
    """Per Linear: input codes that differ (integer vs each simulation), outputs that differ."""
    q_int = quantize_activations(model, mode, calib, **kw)
    sims = {
        dtype: quantize_activations(model, mode, calib, simulate=True, sim_dtype=dtype, **kw)
        for dtype in ("float64", "float32")
    }
    codes = {dtype: [] for dtype in sims}
    outputs = {dtype: [] for dtype in sims}
    for i in range(0, len(val), 16):
        tokens = val[i : i + 16, :-1]  # (16, 128); equal batches: fractions average exactly
        inputs = capture_linear_inputs(q_int, tokens, W8A8Linear)
        layers = dict(q_int.named_modules())
        for dtype, q_sim in sims.items():
            codes[dtype].append(code_mismatch(q_int, q_sim, tokens))
            sim_layers = dict(q_sim.named_modules())
            outputs[dtype].append(
                {n: float(np.mean(layers[n](x) != sim_layers[n](x))) for n, x in inputs.items()}
            )
    names = list(codes["float64"][0])
    mean = {
        (kind, dtype): {n: float(np.mean([b[n] for b in table[dtype]])) for n in names}
        for kind, table in (("codes", codes), ("outputs", outputs))
        for dtype in sims
    }
    print("  layer              codes differ: float64  float32 | outputs differ: float64  float32")
    for n in names:
        print(
            f"  {n:<18} {100 * mean['codes', 'float64'][n]:21.4f}% "
            f"{100 * mean['codes', 'float32'][n]:7.4f}% |"
            f" {100 * mean['outputs', 'float64'][n]:22.4f}% "
            f"{100 * mean['outputs', 'float32'][n]:7.4f}%"
        )
    for dtype in sims:
        first = next((n for n in names if mean["codes", dtype][n] > 0), None)
        total = np.mean([np.mean(list(b.values())) for b in outputs[dtype]])
        print(
            f"  {dtype} simulation: first code difference at {first}; outputs differ "
            f"{100 * total:.4f}% (mean over layers)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16_385, help="val tokens (default 16,385)")
    parser.add_argument("--model", choices=["both", "tiny_lm", "synthetic"], default="both")
    parser.add_argument("--diagnose", action="store_true", help="per-layer code mismatch")
    parser.add_argument("--kv-only", action="store_true", help="float and KV-cache rows only")
    args = parser.parse_args()
    lm = mq.models.load_pretrained("tiny_lm")
    val = windows(mq.data.encode(mq.data.load_text("val"))[: args.tokens])
    train = mq.data.encode(mq.data.load_text("train"))
    calib = train[: 16 * CONTEXT].reshape(16, CONTEXT)  # (16, 128)
    sweep = windows(train[16 * CONTEXT : 32 * CONTEXT + 1])  # 16 other windows
    print(f"{val.size - len(val)} predicted val tokens; calibration 16 x {CONTEXT} train tokens")
    models = {}
    if args.model in ("both", "tiny_lm"):
        models["tiny_lm"] = lm
    if args.model in ("both", "synthetic"):
        models["tiny_lm + synthetic outlier (ch 0 x 32)"] = inject_outlier_channel(lm, 0, 32.0)
    rows = []
    for label, model in models.items():
        t0 = time.perf_counter()
        ppl_float, _ = evaluate(model, val)
        rows.append((label, "float", ppl_float, None, None))
        print(format_row(rows[-1], ppl_float), flush=True)
        if args.diagnose:
            for name, mode, kw in DIAGNOSED:
                print(f"{label}: {name}", flush=True)
                diagnose(model, mode, calib, val, **kw)
            continue
        ppl_sweep = {} if args.kv_only else sweep_alphas(model, calib, sweep, label)
        best = min(ppl_sweep, key=lambda a: ppl_sweep[a]) if ppl_sweep else None
        configs = [] if args.kv_only else w8a8_configs(best)
        for name, mode, kw in configs:
            q_int = quantize_activations(model, mode, calib, **kw)
            q_sim = quantize_activations(model, mode, calib, simulate=True, **kw)
            q_naive = quantize_activations(
                model, mode, calib, simulate=True, sim_dtype="float32", **kw
            )
            ppl, top = evaluate(q_int, val)
            ppl_sim, top_sim = evaluate(q_sim, val)
            top_naive = evaluate(q_naive, val)[1]
            agree, naive = float(np.mean(top == top_sim)), float(np.mean(top == top_naive))
            note = f"float cols {float_column_fraction(q_int):.3f}" if mode == "llm_int8" else ""
            rows.append((label, name, ppl, (ppl_sim, agree, naive), note))
            print(format_row(rows[-1], ppl_float), flush=True)
        for name, bits, axis in KV_CONFIGS:
            kv = KVQuantizedLM(model, bits, key_axis=axis, group_size=KIVI_GROUP)
            ppl, _ = evaluate(kv, val)
            note = f"{kv.nbytes_per_token():.0f} B/token (float32 {kv.float32_nbytes_per_token()})"
            rows.append((label, name, ppl, None, note))
            print(format_row(rows[-1], ppl_float), flush=True)
        print(f"{label}: {time.perf_counter() - t0:.0f} s")
    if args.diagnose:
        return
    print()
    print(
        "| model | configuration | perplexity | vs float | simulation ppl | argmax agreement "
        "| naive float32 simulation agreement |"
    )
    print("|---|---|---|---|---|---|---|")
    floats = {label: ppl for label, name, ppl, _, _ in rows if name == "float"}
    for row in rows:
        print(format_row(row, floats[row[0]]))


if __name__ == "__main__":
    main()
