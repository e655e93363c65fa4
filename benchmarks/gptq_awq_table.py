"""GPTQ and AWQ against round to nearest on ``tiny_lm``: perplexity, layer error, time.

Perplexity on the first 16,385 characters of the validation text (Macbeth); calibration:
128 windows of 128 characters of the training text (16,384 tokens; seed 0 unless ``--seed``),
never the validation text: the GPTQ paper's 128 random segments, at this model's context.
Layer error: ``||X W^T - X W_hat^T||^2`` on the float model's calibration inputs ``X``
(for AWQ, the scaled model's inputs and weights, the same function), relative to RTN's.

Calibration time is CPU time of the process (one BLAS thread; the machine is shared).

Methods: ``rtn``; ``gptq``; ``gptq_act_order``; ``awq_scale`` (AWQ's scale search only);
``awq_clip`` (RTN after AWQ's clipping search only); ``awq`` (both: the library's default).

Usage: ``python benchmarks/gptq_awq_table.py [--settings 4:128 3:128 3:0 2:64] [--seed 0]
[--num-sequences 128]`` (``bits:group``, group 0 = per output channel).

NOTE: OpenBLAS is limited to one thread unless OPENBLAS_NUM_THREADS is already set, so that
the float sums (and the printed figures) are the same run to run.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import numpy as np

from minquant.data import encode, load_text
from minquant.llm import perplexity, quantize_weights
from minquant.llm.awq import awq_clip_model, awq_scale_model, keep_salient_channels
from minquant.llm.layer_inputs import calibration_batch
from minquant.llm.weight_only import _linear_inputs
from minquant.models import load_pretrained
from minquant.nn import Linear

SEQ_LEN = 128
NUM_VAL = 16_385
METHODS = ("rtn", "gptq", "gptq_act_order", "awq_scale", "awq_clip", "awq")


def quantize(lm, calib, bits, group_size, method):
    """``(quantized model, AWQ plan or ())`` for one method of the table."""
    if method.startswith("awq"):
        scaled, plan = lm, ()
        if method != "awq_clip":
            scaled, plan = awq_scale_model(lm, calib, bits, group_size)
        if method != "awq_scale":
            scaled = awq_clip_model(scaled, calib, bits, group_size)
        return quantize_weights(scaled, bits, group_size, "rtn"), plan
    return quantize_weights(lm, bits, group_size, method, X_calib=calib), ()


def layer_errors(float_model, qmodel, calib, plan=()) -> dict[str, float]:
    """Per-layer ||X (W - W_hat)^T||^2 with X the float model's calibration inputs.

    For AWQ, W_hat is the stored weight with the folded scales undone (``plan``): the
    columns divided by the consumer's s, the rows multiplied by the producer's s.
    """
    inputs = _linear_inputs(float_model, calib)
    qlayers = dict(qmodel.named_modules())
    columns = {name: s for _, consumers, s in plan for name in consumers}
    rows = {producer: s for producer, _, s in plan}
    errors = {}
    for name, layer in float_model.named_modules():
        if type(layer) is Linear:
            w_hat = qlayers[name].dequantized_weight().astype(np.float64)  # (out, in)
            w_hat = w_hat / columns.get(name, 1.0) * rows.get(name, np.ones(1))[:, None]
            diff = layer.weight.data - w_hat  # (out, in)
            errors[name] = float(np.sum((inputs[id(layer)].astype(np.float64) @ diff.T) ** 2))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=["4:128", "3:128", "3:0", "2:64"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    parser.add_argument("--num-sequences", type=int, default=128, help="calibration windows")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    lm = load_pretrained("tiny_lm")
    val = encode(load_text("val"))[:NUM_VAL]
    rng = np.random.default_rng(args.seed)
    calib = calibration_batch(encode(load_text("train")), args.num_sequences, SEQ_LEN, rng)
    ppl_float = perplexity(lm, val)
    print(
        f"float perplexity {ppl_float:.4f}  (calibration {args.num_sequences} x {SEQ_LEN} "
        f"chars, seed {args.seed})"
    )
    for setting in args.settings:
        bits, group = (int(v) for v in setting.split(":"))
        group_size = group or None
        label = f"W{bits} " + (f"g{group}" if group else "per-channel")
        rows, errors = {}, {}
        methods = ["rtn"] + [m for m in args.methods if m != "rtn"]
        for method in methods:
            start = time.process_time()
            qlm, plan = quantize(lm, calib, bits, group_size, method)
            seconds = time.process_time() - start
            rows[method] = (perplexity(qlm, val), seconds)
            errors[method] = layer_errors(lm, qlm, calib, plan)
        salient = perplexity(keep_salient_channels(lm, calib, bits, group_size), val)
        gap = rows["rtn"][0] - ppl_float
        print(
            f"\n{label}: RTN gap to float {gap:.4f}; RTN + 1% salient channels in float "
            f"{salient:.4f}"
        )
        print(
            "| method | perplexity | gap recovered | vs float | layer error / RTN "
            "(median, max) | calibration CPU s |"
        )
        print("|---|---|---|---|---|---|")
        for method in methods:
            ppl, seconds = rows[method]
            ratio = np.array([errors[method][k] / errors["rtn"][k] for k in errors["rtn"]])
            recovered = (rows["rtn"][0] - ppl) / gap if gap > 0 else float("nan")
            print(
                f"| {method} | {ppl:.4f} | {100 * recovered:.0f}% | "
                f"{100 * (ppl / ppl_float - 1):+.1f}% | {np.median(ratio):.3f}, "
                f"{ratio.max():.3f} | {seconds:.1f} |"
            )
        for method in [m for m in ("gptq", "gptq_act_order") if m in methods]:
            worse = sum(errors[method][k] > errors["rtn"][k] for k in errors["rtn"])
            worst = max(errors[method], key=lambda k: errors[method][k] / errors["rtn"][k])
            print(f"{method} layers with error > RTN: {worse} of {len(errors['rtn'])} ({worst=})")


if __name__ == "__main__":
    main()
