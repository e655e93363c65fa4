"""``python -m minquant export MODEL --format onnx|npz|gguf -o PATH``: ship a packaged model.

A CNN (``small_cnn``) is quantized with :func:`minquant.ptq.quantize_model`'s defaults (W8A8,
per channel, min/max observer, TFLite fixed point) on the first 1,000 training digits, then
written as a minquant file (``npz``, :func:`minquant.export.save`) or as ONNX
(:func:`minquant.export.to_onnx`, ``--form integer`` or ``qdq``). The language model
(``tiny_lm``) is written as GGUF (:func:`minquant.export.to_gguf`, ``--gguf-type q8_0`` by
default).
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
        help="write a packaged model: a CNN quantized (PTQ) as npz or ONNX, tiny_lm as GGUF",
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
    parser.add_argument("-o", "--output", type=pathlib.Path, required=True, help="file to write")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Quantize ``args.model`` and write it to ``args.output``; prints what it wrote."""
    from minquant import models
    from minquant.data import load_mnist
    from minquant.export import save, to_gguf, to_onnx
    from minquant.ptq import quantize_model

    if (args.model == "tiny_lm") != (args.file_format == "gguf"):
        raise SystemExit(
            f"export: --format gguf is for tiny_lm and npz/onnx for the CNNs, "
            f"got {args.model} with --format {args.file_format}"
        )
    if args.file_format == "gguf":
        to_gguf(models.load_pretrained("tiny_lm"), args.output, args.gguf_type)
        size = args.output.stat().st_size
        print(f"wrote {args.output}: tiny_lm, GGUF ({args.gguf_type}), {size:,} bytes")
        return 0
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
