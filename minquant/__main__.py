"""Command line: `python -m minquant demo` runs the end-to-end tour on the bundled data;
`python -m minquant export MODEL --format onnx|npz -o PATH` writes a quantized packaged model
(see :mod:`minquant.export.cli`).

The tour:


1. train the float small_cnn on the 4,000 training digits (one progress bar per stage);
2. post-training quantization to W8A8 (integer-only inference, TFLite fixed point);
3. quantization-aware fine-tuning at W4A4, converted to the same integer-only model;
4. a table (test accuracy, bytes, images/s, agreement with the fake-quant simulation)
   and a plot, minquant_demo.png, written into the folder given by --out.
"""

import argparse
import pathlib
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from minquant.export.cli import add_export_parser, run_export


@dataclass
class DemoConfig:
    epochs: int = 10  # float training epochs (as benchmarks/make_pretrained.py)
    qat_epochs: int = 2  # QAT fine-tuning epochs at W4A4 (as benchmarks/qat_table.py)
    seed: int = 0  # seeds the initialisation, shuffling and augmentation
    out: pathlib.Path = pathlib.Path("out")  # folder for the plot (ignored by git)
    train_size: int | None = None  # None: all 4,000 training digits
    calib_size: int = 1000  # calibration images for PTQ
    batch_size: int = 32  # training batch size
    lr: float = 2e-3  # Adam learning rate (cosine decay over the epochs)
    qat_lr: float = 1e-4  # Adam learning rate of the QAT fine-tuning
    qat_batch_size: int = 64  # QAT batch size


@dataclass
class Row:
    name: str
    accuracy: float
    nbytes: int
    images_per_s: float
    agreement: float | None  # integer vs fake-quant simulation (argmax), None for float


def _throughput(forward, X: np.ndarray) -> float:
    forward(X[:8])  # warm-up: compiles the Numba kernels on first use
    start = time.perf_counter()
    forward(X)
    return len(X) / (time.perf_counter() - start)


def _quantized_row(name: str, qmodel, X: np.ndarray, y: np.ndarray) -> Row:
    int_pred = qmodel(X).argmax(axis=1)  # (N,)
    sim_pred = qmodel.simulate(X).argmax(axis=1)  # (N,)
    return Row(
        name=name,
        accuracy=float(np.mean(int_pred == y)),
        nbytes=qmodel.packed_nbytes,
        images_per_s=_throughput(qmodel, X),
        agreement=float(np.mean(int_pred == sim_pred)),
    )


def run_demo(cfg: DemoConfig) -> tuple[list[Row], dict[str, list[float]], pathlib.Path]:
    """Train, quantize (PTQ W8A8, QAT W4A4), measure; returns rows, history and plot path."""
    from minquant import models, ptq, qat, train
    from minquant.data import load_mnist, random_shift

    rng = np.random.default_rng(cfg.seed)
    X_train, y_train = load_mnist("train")  # (4000, 1, 28, 28), (4000,)
    X_test, y_test = load_mnist("test")  # (1000, 1, 28, 28), (1000,)
    if cfg.train_size is not None:
        X_train, y_train = X_train[: cfg.train_size], y_train[: cfg.train_size]

    print(f"1. training small_cnn on {len(X_train)} digits for {cfg.epochs} epoch(s)")
    model = models.small_cnn(rng=rng)
    history = train.fit(
        model,
        X_train,
        y_train,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        rng=rng,
        lr_schedule=train.cosine_schedule(cfg.lr, cfg.epochs),
        augment=lambda X_batch, rng: random_shift(X_batch, 2, rng),
    )
    float_row = Row(
        name="FP32",
        accuracy=train.evaluate(model, X_test, y_test),
        nbytes=sum(p.data.nbytes for p in ptq.fold_batchnorm(model).parameters()),
        images_per_s=_throughput(lambda X: train.predict(model, X), X_test),
        agreement=None,
    )

    print("2. post-training quantization, W8A8 (int8 weights and activations)")
    X_calib = X_train[: cfg.calib_size]
    ptq_model = ptq.quantize_model(model, X_calib, weight_bits=8, act_bits=8)
    ptq_row = _quantized_row("PTQ W8A8", ptq_model, X_test, y_test)

    print(f"3. quantization-aware training, W4A4, {cfg.qat_epochs} epoch(s)")
    qat_model = qat.prepare_qat(model, weight_bits=4, act_bits=4)
    train.fit(
        qat_model,
        X_train,
        y_train,
        epochs=cfg.qat_epochs,
        batch_size=cfg.qat_batch_size,
        lr=cfg.qat_lr,
        rng=rng,
    )
    qat_row = _quantized_row("QAT W4A4", qat.convert(qat_model), X_test, y_test)

    rows = [float_row, ptq_row, qat_row]
    cfg.out.mkdir(parents=True, exist_ok=True)
    plot_path = cfg.out / "minquant_demo.png"
    _plot_summary(history["loss"], rows).savefig(plot_path)
    return rows, history, plot_path


def _plot_summary(losses: list[float], rows: list[Row]):
    """Training loss per epoch, then test accuracy and model size of each model.

    Every panel is a bar chart whose axis starts at 0, with each bar's value printed on it:
    no axis limit can hide a bar or exaggerate a difference.
    """
    import matplotlib

    # NOTE: a bare Figure needs no GUI backend (and leaves pyplot's state alone).
    from matplotlib.figure import Figure

    from minquant import viz

    names = [r.name for r in rows]
    colors = ["#6d9dc5", "#81b29a", "#e07a5f"]
    epochs = [str(e) for e in range(1, len(losses) + 1)]
    with matplotlib.rc_context(viz.STYLE):
        fig = Figure(figsize=(12, 3.8))
        ax_loss, ax_acc, ax_bytes = fig.subplots(1, 3)
        bars = ax_loss.bar(epochs, losses, color="#6d9dc5")
        ax_loss.bar_label(bars, fmt="%.3f")
        ax_loss.set(title="float training loss", xlabel="epoch", ylabel="mean cross-entropy")
        ax_loss.set_ylim(0, 1.15 * max(losses))
        bars = ax_acc.bar(names, [100 * r.accuracy for r in rows], color=colors)
        ax_acc.bar_label(bars, fmt="%.1f%%")
        ax_acc.set(title="test accuracy (%)", ylim=(0, 110))
        bars = ax_bytes.bar(names, [r.nbytes / 1024 for r in rows], color=colors)
        ax_bytes.bar_label(bars, fmt="%.1f")
        ax_bytes.set(title="model size (KiB)", ylim=(0, 1.15 * rows[0].nbytes / 1024))
        fig.tight_layout()
    return fig


def format_table(rows: list[Row]) -> str:
    """A markdown table of the demo's results."""
    base = rows[0].nbytes
    lines = [
        "| model | test accuracy | bytes | vs float32 | images/s | agrees with simulation |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        agreement = "-" if r.agreement is None else f"{r.agreement:.1%}"
        lines.append(
            f"| {r.name} | {r.accuracy:.1%} | {r.nbytes:,} | {r.nbytes / base:.1%} "
            f"| {r.images_per_s:,.0f} | {agreement} |"
        )
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows each option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minquant",
        description="minquant: neural-network quantization from first principles.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="the end-to-end tour: train a CNN, quantize it (PTQ W8A8, QAT W4A4), compare",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    defaults = DemoConfig()
    demo.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="epochs of float training"
    )
    demo.add_argument(
        "--qat-epochs",
        type=int,
        default=defaults.qat_epochs,
        help="epochs of quantization-aware fine-tuning at W4A4",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seeds the initialisation, the shuffling and the augmentation",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a quick tour: 1 epoch each on 1,000 digits, overriding --epochs/--qat-epochs",
    )
    demo.add_argument(
        "--out",
        type=pathlib.Path,
        default=defaults.out,
        help="folder for the plot minquant_demo.png (created if missing)",
    )
    add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export":
        return run_export(args)
    for name, value in (("--epochs", args.epochs), ("--qat-epochs", args.qat_epochs)):
        if value < 1:
            raise SystemExit(f"{name} must be >= 1, got {value}")
    cfg = DemoConfig(epochs=args.epochs, qat_epochs=args.qat_epochs, seed=args.seed, out=args.out)
    if args.quick:
        # NOTE: 1 epoch on 1,000 digits: far from the full accuracy, but every stage runs.
        cfg = replace(cfg, epochs=1, qat_epochs=1, train_size=1000, calib_size=200)
    start = time.perf_counter()
    rows, _, plot_path = run_demo(cfg)
    print()
    print(format_table(rows))
    print(f"\nplot written to {plot_path}; total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
