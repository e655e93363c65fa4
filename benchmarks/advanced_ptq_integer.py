"""Integer W*A8 PTQ of the packaged ``mobile_cnn``: RTN, CLE, bias absorption/correction, AdaRound.

The same float-side methods as ``advanced_ptq_table.py`` (weight-only), now fed to
:func:`minquant.ptq.quantize_model`: CLE, bias absorption and bias correction change the float
model that is quantized; AdaRound's learned codes enter as ``weight_codes``. Activations are
8-bit, per tensor, min/max calibrated on the same 256 training images; the integer model runs
integer-only arithmetic (``--requant``, default ``fixedpoint``). Accuracy is on
``load_mnist("test")`` (1,000 images: one image is 0.1 pp); ``agree`` is the argmax agreement
of the integer model with its fake-quant simulation, followed by the number of output codes
(of all steps, 19.37 million) on which the simulation of a step, fed the integer model's
input codes, rounds differently (``QuantizedModel.code_mismatches``).

Usage: ``python benchmarks/advanced_ptq_integer.py [--bits 8 6 4] [--adaround-iterations N]``.

NOTE: OpenBLAS is limited to one thread unless OPENBLAS_NUM_THREADS is already set, so that
the float sums (and the printed figures) are the same run to run.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import time

import numpy as np

from minquant.data import load_mnist
from minquant.models import load_pretrained
from minquant.ptq import AdaRoundConfig, adaround, equalize, quantize_model
from minquant.ptq.bias_correction import empirical_bias_correction
from minquant.ptq.equalize import absorb_bias, fold_batchnorm
from minquant.ptq.weight_quant import fake_quantize_weights

SEED = 0
NUM_CALIB = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    parser.add_argument("--adaround-iterations", type=int, default=1000)
    parser.add_argument("--requant", default="fixedpoint", choices=["fixedpoint", "float"])
    args = parser.parse_args()

    X_train, _ = load_mnist("train")
    X_test, y_test = load_mnist("test")
    X_calib = X_train[np.random.default_rng(SEED).permutation(len(X_train))[:NUM_CALIB]]
    model = load_pretrained("mobile_cnn")
    folded = fold_batchnorm(model)
    absorbed = absorb_bias(equalize(model))
    config = AdaRoundConfig(iterations=args.adaround_iterations)
    float_acc = 100.0 * np.mean(model(X_test).argmax(1) == y_test)
    print(f"float mobile_cnn: {float_acc:.1f} %   requant={args.requant!r}, activations 8-bit")

    def measure(float_model, bits, per_channel, codes=None) -> str:
        qmodel = quantize_model(
            float_model, X_calib, weight_bits=bits, act_bits=8, per_channel=per_channel,
            requant=args.requant, weight_codes=codes,
        )  # fmt: skip
        pred, sim = qmodel(X_test).argmax(1), qmodel.simulate(X_test).argmax(1)
        acc, agree = 100.0 * np.mean(pred == y_test), 100.0 * np.mean(pred == sim)
        differing = sum(row["mismatches"] for row in qmodel.code_mismatches(X_test))
        return f"{acc:5.1f} ({agree:5.1f}; {differing})"

    columns = ["RTN", "CLE+BA", "CLE+BA+BC", "AdaRound"]
    print("\nper-tensor weights: integer accuracy % (agreement with the simulation %; codes)")
    print("bits  " + "".join(f"{c:>20}" for c in columns))
    for bits in args.bits:
        row = [measure(folded, bits, False), measure(absorbed, bits, False)]
        corrected, _ = empirical_bias_correction(
            absorbed, fake_quantize_weights(absorbed, bits), X_calib
        )
        # NOTE: the corrected model's weights are already on the per-tensor grid, so
        # quantize_model finds the same scale and codes; only the biases changed.
        row.append(measure(corrected, bits, False))
        start = time.perf_counter()
        results = adaround(absorbed, X_calib, bits, per_channel=False, config=config)
        codes = {i: r.w_q for i, r in results.items()}
        row.append(measure(absorbed, bits, False, codes))
        seconds = time.perf_counter() - start
        print(f"W{bits}A8 " + "".join(f"{c:>20}" for c in row) + f"   (AdaRound {seconds:.0f} s)")

    print("\nper-channel weights")
    for bits in [b for b in args.bits if b <= 4]:
        results = adaround(folded, X_calib, bits, per_channel=True, config=config)
        codes = {i: r.w_q for i, r in results.items()}
        print(
            f"W{bits}A8: RTN {measure(folded, bits, True)}  "
            f"AdaRound {measure(folded, bits, True, codes)}"
        )


if __name__ == "__main__":
    main()
