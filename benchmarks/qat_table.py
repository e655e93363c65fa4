"""PTQ vs QAT on the bundled MNIST: accuracy, model bytes, integer-vs-simulation agreement.

Starts from the packaged float ``small_cnn`` (``minquant.models.load_pretrained``), quantizes
it post-training (PTQ) at W8A8, W4A8, W4A4 and W2A4, fine-tunes it with fake quantization
(QAT) at W4A4 and W2A4, and writes the table into ``docs/results.md`` between the markers
below (the rest of that file is left alone). Seeded: two runs give the same table.

    python benchmarks/qat_table.py            # about 3-4 minutes on 2 cores
"""

import argparse
import pathlib
import time

import numpy as np

from minquant import ptq, qat, train
from minquant.data import load_mnist
from minquant.models import load_pretrained

START, END = "<!-- qat-table:start -->", "<!-- qat-table:end -->"
RESULTS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results.md"
CALIBRATION_SIZE = 1000
QAT_EPOCHS, QAT_LR, QAT_BATCH, SEED = 2, 1e-4, 64, 0
# NOTE: float32 requantization (PyTorch x86) rounds like the fake quantizers, so the integer
# models reproduce their simulations; "fixedpoint" moves a few 4-bit codes by one step.
REQUANT = "float"


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
        if a_bits == 4:
            qat_model = qat.prepare_qat(model, weight_bits=w_bits, act_bits=a_bits)
            rng = np.random.default_rng(SEED)
            start = time.perf_counter()
            train.fit(
                qat_model,
                X_train,
                y_train,
                epochs=QAT_EPOCHS,
                batch_size=QAT_BATCH,
                lr=QAT_LR,
                rng=rng,
                quiet=True,
            )
            timings[f"QAT W{w_bits}A{a_bits}"] = time.perf_counter() - start
            qmodel = qat.convert(qat_model, requant=REQUANT)
            row = _row(f"QAT W{w_bits}A{a_bits}", qmodel, X_test, y_test)
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
        f"{qat.FREEZE_BN_STEPS} steps, then `convert`. Model bytes: the model stored with its "
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
    args = parser.parse_args()
    start = time.perf_counter()
    rows, timings = run()
    text = table(rows, timings)
    print(text)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if not args.no_write:
        write(text)


if __name__ == "__main__":
    main()
