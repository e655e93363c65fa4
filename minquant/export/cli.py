"""``python -m minquant export MODEL --format onnx|npz|gguf -o PATH``: ship a packaged model.

A CNN (``small_cnn``) is quantized with :func:`minquant.ptq.quantize_model`'s defaults (W8A8,
per channel, min/max observer, TFLite fixed point) on the first 1,000 training digits, then
written as a minquant file (``npz``, :func:`minquant.export.save`) or as ONNX
(:func:`minquant.export.to_onnx`, ``--form integer`` or ``qdq``). The language model
(``tiny_lm``) is written as GGUF (:func:`minquant.export.to_gguf`, ``--gguf-type q8_0`` by
default) or, weight-only quantized by :func:`minquant.llm.quantize_weights` (round to
nearest, asymmetric, ``--bits 4 --group-size 64`` by default), as a minquant file (``npz``).
"""

import argparse
import pathlib

from minquant.export import GGUF_FORMATS, ONNX_FORMS

__all__ = ["EXPORT_FORMATS", "EXPORT_MODELS", "add_export_parser", "run_export"]

#: The packaged models the command quantizes (the CNNs of ``minquant.models.PRETRAINED``).
EXPORT_MODELS = ("small_cnn", "tiny_lm")
#: The file formats it writes.
EXPORT_FORMATS = ("npz", "onnx", "gguf")
#: Calibration images for the PTQ defaults (as ``python -m minquant demo``).
CALIB_SIZE = 1000


def add_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``export`` command to the subparsers ``sub`` of ``python -m minquant``."""
    parser = sub.add_parser(
        "export",
        help="write a packaged model: a CNN quantized (PTQ) as npz or ONNX, tiny_lm as GGUF "
        "or weight-only quantized as npz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", choices=EXPORT_MODELS, help="the packaged model")
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True, dest="file_format")
    parser.add_argument(
        "--form", choices=ONNX_FORMS, default="integer", help="ONNX graph form (default integer)"
    )
    parser.add_argument(
        "--gguf-type",
        choices=GGUF_FORMATS,
        default="q8_0",
        help="GGUF tensor type of the matrices (default q8_0)",
    )
    parser.add_argument(
        "--bits", type=int, choices=range(2, 9), default=4, help="tiny_lm npz: bits (default 4)"
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=64,
        help="tiny_lm npz: weights per scale, 0 for one per output channel (default 64)",
    )
    parser.add_argument("-o", "--output", type=pathlib.Path, required=True, help="file to write")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Quantize ``args.model`` and write it to ``args.output``; prints what it wrote."""
    from minquant import models
    from minquant.data import load_mnist
    from minquant.export import save, to_onnx
    from minquant.ptq import quantize_model

    allowed = ("npz", "gguf") if args.model == "tiny_lm" else ("npz", "onnx")
    if args.file_format not in allowed:
        raise SystemExit(
            "export: --format gguf is for tiny_lm, onnx for the CNNs (npz for both), "
            f"got {args.model} with --format {args.file_format}"
        )
    if args.model == "tiny_lm":
        return _export_lm(args)
    X_train, _ = load_mnist("train")
    qmodel = quantize_model(models.load_pretrained(args.model), X_train[:CALIB_SIZE])
    if args.file_format == "npz":
        save(qmodel, args.output)
        what = "minquant npz"
    else:
        to_onnx(qmodel, args.output, form=args.form)
        what = f"ONNX ({args.form} form)"
    size = args.output.stat().st_size
    print(f"wrote {args.output}: {args.model} W8A8, {what}, {size:,} bytes")
    return 0


def _export_lm(args: argparse.Namespace) -> int:
    from minquant import models
    from minquant.export import save, to_gguf
    from minquant.llm import quantize_weights

    lm = models.load_pretrained("tiny_lm")
    if args.file_format == "gguf":
        to_gguf(lm, args.output, args.gguf_type)
        what = f"GGUF ({args.gguf_type})"
    else:
        group_size = None if args.group_size == 0 else args.group_size
        try:
            qlm = quantize_weights(lm, args.bits, group_size)
        except ValueError as err:
            raise SystemExit(f"export: {err}") from err
        save(qlm, args.output)
        groups = "per channel" if group_size is None else f"g{group_size}"
        what = f"W{args.bits} {groups} weight-only, minquant npz"
    size = args.output.stat().st_size
    print(f"wrote {args.output}: tiny_lm, {what}, {size:,} bytes")
    return 0
