"""PTQ vs QAT on the bundled MNIST: accuracy, model bytes, integer-vs-simulation agreement.

Starts from the packaged float ``small_cnn`` (``minquant.models.load_pretrained``), quantizes
it post-training (PTQ) at W8A8, W4A8, W4A4 and W2A4, fine-tunes it with fake quantization
(QAT) at W4A4 and W2A4, and writes the table into ``docs/results.md`` between the markers
below (the rest of that file is left alone). Seeded: two runs give the same table (with one
BLAS thread: training sums floats in a thread-dependent order).

Two QAT recipes: the course's (``prepare_qat`` defaults, as notebook 06: narrow-range min/max
weight scales, 2 epochs at lr 1e-4) and the low-bit one (PyTorch's reference recipe of
``benchmarks/qat_torch_reference.py``: the full 2-bit grid {-2, -1, 0, 1}, 3 epochs at lr
5e-4), plus LSQ's initial weight scale and BitNet b1.58 ternary weights.

    OPENBLAS_NUM_THREADS=1 python benchmarks/qat_table.py   # about 5 minutes on 2 cores
    OPENBLAS_NUM_THREADS=1 python benchmarks/qat_table.py --study   # the W2A4 steps, printed

``--study`` prints minquant's W2A4 accuracy for the ingredients that
``benchmarks/qat_torch_reference.py`` varies on PyTorch's side (grid, epochs and learning
rate, weight observer averaging, BatchNorm freezing, seed), one at a time.
"""

import argparse
import pathlib
import time
from functools import partial

import numpy as np

from minquant import fake_quant, lowbit_qat, ptq, qat, train
from minquant.data import load_mnist
from minquant.models import load_pretrained

START, END = "<!-- qat-table:start -->", "<!-- qat-table:end -->"
RESULTS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results.md"
CALIBRATION_SIZE = 1000
QAT_EPOCHS, QAT_LR, QAT_BATCH, SEED = 2, 1e-4, 64, 0
LOW_BIT_EPOCHS, LOW_BIT_LR = 3, 5e-4
# name: (weight_bits, act_bits, prepare_qat keyword arguments, epochs, lr)
QAT_ROWS = {
    "QAT W4A4": (4, 4, {}, QAT_EPOCHS, QAT_LR),
    "QAT W2A4": (2, 4, {}, QAT_EPOCHS, QAT_LR),
    "QAT W2A4, grid {-2..1}": (2, 4, {"weight_narrow_range": False}, QAT_EPOCHS, QAT_LR),
    "QAT W2A4, grid {-2..1}, low-bit recipe": (
        2,
        4,
        {"weight_narrow_range": False},
        LOW_BIT_EPOCHS,
        LOW_BIT_LR,
    ),
    "QAT W2A4, grid {-2..1}, LSQ init scale, low-bit recipe": (
        2,
        4,
        {"weight_narrow_range": False, "weight_quant": "lsq"},
        LOW_BIT_EPOCHS,
        LOW_BIT_LR,
    ),
    "QAT W1.58A4 ternary (absmean), low-bit recipe": (
        2,
        4,
        {"weight_quant": "ternary"},
        LOW_BIT_EPOCHS,
        LOW_BIT_LR,
    ),
}
# NOTE: float32 requantization (PyTorch x86) rounds like the fake quantizers, so the integer
# models reproduce their simulations; "fixedpoint" moves a few 4-bit codes by one step.
REQUANT = "float"


def _moving_average_weight_fq(narrow_range: bool) -> fake_quant.FakeQuantize:
    """Torch's default weight quantizer: min/max with a moving average (constant 0.01)."""
    observer = partial(fake_quant._default_observer(0), averaging_constant=0.01)
    return fake_quant.FakeQuantize(
        2, signed=True, symmetric=True, axis=0, observer=observer, narrow_range=narrow_range
    )


def _masked_ternary_weight_fq(narrow_range: bool) -> fake_quant.FakeQuantize:
    """The ternary grid and absmean scale with an ordinary (clipping-masked) STE."""
    return fake_quant.FakeQuantize(
        2, True, True, axis=0, observer=lowbit_qat.AbsMeanObserver, narrow_range=narrow_range
    )


FULL = {"weight_narrow_range": False}
LIVE_BN = {"weight_narrow_range": False, "freeze_bn_steps": 10**9}
TERNARY = {"weight_quant": "ternary"}
# name: (prepare_qat keyword arguments, epochs, lr, weight quantizer stand-in or None, seed)
STUDY = {
    "narrow {-1,0,1}, min/max scale, 2 ep, lr 1e-4 (course)": ({}, 2, 1e-4, None, 0),
    "narrow {-1,0,1}, min/max scale, 3 ep, lr 5e-4": ({}, 3, 5e-4, None, 0),
    "narrow {-1,0,1}, LSQ init scale, 2 ep, lr 1e-4": ({"weight_quant": "lsq"}, 2, 1e-4, None, 0),
    "ternary (absmean), 2 ep, lr 1e-4": (TERNARY, 2, 1e-4, None, 0),
    "[-2,1], 2 ep, lr 1e-4": (FULL, 2, 1e-4, None, 0),
    "[-2,1], 3 ep, lr 5e-4": (FULL, 3, 5e-4, None, 0),
    "[-2,1], 3 ep, lr 5e-4, seed 1": (FULL, 3, 5e-4, None, 1),
    "[-2,1], 3 ep, lr 5e-4, seed 2": (FULL, 3, 5e-4, None, 2),
    "[-2,1], 3 ep, lr 5e-4, BN never frozen": (LIVE_BN, 3, 5e-4, None, 0),
    "[-2,1], 3 ep, lr 5e-4, BN never frozen, avg 0.01 (torch defaults)": (
        LIVE_BN,
        3,
        5e-4,
        _moving_average_weight_fq,
        0,
    ),
    "ternary per tensor, 3 ep, lr 5e-4": ({**TERNARY, "per_channel": False}, 3, 5e-4, None, 0),
    "ternary, clipping-masked STE, 3 ep, lr 5e-4": (
        TERNARY,
        3,
        5e-4,
        _masked_ternary_weight_fq,
        0,
    ),
}
for _seed in (1, 2):
    STUDY[f"[-2,1], LSQ init scale, 3 ep, lr 5e-4, seed {_seed}"] = (
        {**FULL, "weight_quant": "lsq"},
        3,
        5e-4,
        None,
        _seed,
    )
    STUDY[f"ternary (absmean), 3 ep, lr 5e-4, seed {_seed}"] = (TERNARY, 3, 5e-4, None, _seed)


def study(only: str | None = None) -> None:
    """Print minquant's W2A4 QAT accuracy for each variant of ``STUDY`` (names with ``only``)."""
    X_train, y_train = load_mnist("train")
    X_test, y_test = load_mnist("test")
    model = load_pretrained("small_cnn")
    for name, (kwargs, epochs, lr, make_weight_fq, seed) in STUDY.items():
        if only is not None and only not in name:
            continue
        qat_model = qat.prepare_qat(model, weight_bits=2, act_bits=4, **kwargs)
        if make_weight_fq is not None:
            narrow = kwargs.get("weight_narrow_range", True)
            for layer in qat_model:
                if isinstance(layer, (qat.QATConvBn2d, qat.QATLinear)):
                    layer.weight_fake_quant = make_weight_fq(narrow)
        start = time.perf_counter()
        train.fit(
            qat_model,
            X_train,
            y_train,
            epochs=epochs,
            batch_size=QAT_BATCH,
            lr=lr,
            rng=np.random.default_rng(seed),
            quiet=True,
        )
        seconds = time.perf_counter() - start
        qmodel = qat.convert(qat_model, requant=REQUANT)
        int_pred = qmodel(X_test).argmax(axis=1)
        agree = np.mean(int_pred == qmodel.simulate(X_test).argmax(axis=1))
        print(
            f"minquant W2A4 {name:<66} {np.mean(int_pred == y_test):.1%}  "
            f"(int vs simulation {agree:.1%}, {seconds:.0f} s)",
            flush=True,
        )


def _row(name: str, qmodel: ptq.QuantizedModel, X: np.ndarray, y: np.ndarray) -> dict:
    int_pred = qmodel(X).argmax(axis=1)
    sim_pred = qmodel.simulate(X).argmax(axis=1)
    return {
        "name": name,
        "accuracy": float(np.mean(int_pred == y)),
        "bytes": qmodel.packed_nbytes,
        "agreement": float(np.mean(int_pred == sim_pred)),
    }


def run() -> tuple[list[dict], dict]:
    X_train, y_train = load_mnist("train")
    X_test, y_test = load_mnist("test")
    model = load_pretrained("small_cnn")
    X_calib = X_train[:CALIBRATION_SIZE]
    rows = []
    fp32 = ptq.quantize_model(model, X_calib, 8, 8)  # only for the float byte count
    rows.append(
        {
            "name": "FP32",
            "accuracy": train.evaluate(model, X_test, y_test),
            "bytes": fp32.float_nbytes,
            "agreement": None,
        }
    )
    timings = {}
    for w_bits, a_bits in ((8, 8), (4, 8), (4, 4), (2, 4)):
        qmodel = ptq.quantize_model(
            model, X_calib, w_bits, a_bits, requant=REQUANT, reduce_range=False
        )
        rows.append(_row(f"PTQ W{w_bits}A{a_bits}", qmodel, X_test, y_test))
        for name, (qat_w, qat_a, kwargs, epochs, lr) in QAT_ROWS.items():
            if (qat_w, qat_a) != (w_bits, a_bits):
                continue
            qat_model = qat.prepare_qat(model, weight_bits=qat_w, act_bits=qat_a, **kwargs)
            start = time.perf_counter()
            train.fit(
                qat_model,
                X_train,
                y_train,
                epochs=epochs,
                batch_size=QAT_BATCH,
                lr=lr,
                rng=np.random.default_rng(SEED),
                quiet=True,
            )
            timings[name] = time.perf_counter() - start
            qmodel = qat.convert(qat_model, requant=REQUANT)
            row = _row(name, qmodel, X_test, y_test)
            qat_pred = train.predict(qat_model.eval(), X_test).argmax(axis=1)
            row["qat_agreement"] = float(np.mean(qmodel(X_test).argmax(axis=1) == qat_pred))
            rows.append(row)
    return rows, timings


def table(rows: list[dict], timings: dict) -> str:
    fp32 = rows[0]["accuracy"]
    lines = [
        "| model | test accuracy | vs FP32 | model bytes | int vs simulation | int vs QAT model |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.1%}"
        qat_agree = f"{r['qat_agreement']:.1%}" if "qat_agreement" in r else "-"
        delta = (r["accuracy"] - fp32) * 100
        lines.append(
            f"| {r['name']} | {r['accuracy']:.1%} | {delta:+.1f} pp | {r['bytes']:,} | "
            f"{agree} | {qat_agree} |"
        )
    lines.append("")
    lines.append(
        f"Test split: 1,000 images. PTQ: min/max calibration on {CALIBRATION_SIZE:,} training "
        "images, per-channel symmetric narrow-range weights, asymmetric per-tensor "
        "activations without reduce_range, float32 requantization (PyTorch x86 style). "
        "QAT: `prepare_qat` on the same float "
        f"model, {QAT_EPOCHS} epochs of Adam (lr {QAT_LR}, batch {QAT_BATCH}, seed {SEED}) on "
        "the 4,000 training images, BatchNorm frozen after "
        f"{qat.FREEZE_BN_STEPS} steps, then `convert`; narrow-range min/max weight scales "
        "(W2: codes {-1, 0, 1}, scale max|w|) unless a row says otherwise. "
        "Grid {-2..1}: `weight_narrow_range=False`. Low-bit recipe: "
        f"{LOW_BIT_EPOCHS} epochs at lr {LOW_BIT_LR} (PyTorch's reference recipe). LSQ init "
        'scale: `weight_quant="lsq"`, s = 2 mean|w| / sqrt(qmax) per channel, recomputed '
        'each step. Ternary: `weight_quant="ternary"`, BitNet b1.58 absmean per channel, '
        "codes {-1, 0, 1} stored (and counted) as 2-bit codes. "
        "Model bytes: the model stored with its "
        "weight codes packed at weight_bits bits (`QuantizedModel.packed_nbytes`). "
        "Agreement: share of test argmaxes equal between the integer model and its "
        "fake-quant simulation "
        "(`QuantizedModel.simulate`), and for QAT between the integer model and the "
        "trained QAT model."
    )
    times = ", ".join(f"{name} {sec:.0f} s" for name, sec in timings.items())
    lines.append("")
    lines.append(f"QAT fine-tuning wall time in the run that wrote this table: {times}.")
    return "\n".join(lines)


def write(text: str) -> None:
    block = f"{START}\n{text}\n{END}"
    old = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n## Post-training vs quantization-aware training\n\n"
        new += block + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--study", action="store_true", help="print the W2A4 study only")
    parser.add_argument("--only", help="--study: only the variants whose name contains this")
    args = parser.parse_args()
    if args.study:
        study(args.only)
        return
    start = time.perf_counter()
    rows, timings = run()
    text = table(rows, timings)
    print(text)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if not args.no_write:
        write(text)


if __name__ == "__main__":
    main()
