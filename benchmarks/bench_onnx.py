"""ONNX Runtime (CPU, one thread): float32 vs the two int8 graphs of small_cnn, side by side.

The pretrained ``small_cnn``, quantized W8A8 with ``requant="float"`` (1,000 calibration
digits), exported by :func:`minquant.export.to_onnx` in three forms: ``float`` (the folded
float model), ``integer`` (ConvInteger/MatMulInteger + float requantization) and ``qdq``
(QuantizeLinear/DequantizeLinear, which ONNX Runtime fuses into QLinearConv/QGemm). For each
batch size every session runs once to warm up, then ``--repeat`` times ``max(1, 256 //
batch)`` calls; the best is reported in microseconds per image, with the ratio to float32.
Only ONNX Runtime runs while timing (no Numba or BLAS threads in between).

Usage: ``python benchmarks/bench_onnx.py [--repeat 5] [--threads 1]``
"""

import argparse
import os
import pathlib
import tempfile
import timeit

import onnxruntime as ort

from minquant import models
from minquant.data import load_mnist
from minquant.export import to_onnx
from minquant.ptq import quantize_model

FORMS = ("float", "integer", "qdq")
BATCHES = (1, 32, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    X_train, _ = load_mnist("train")
    X_test, _ = load_mnist("test")
    qmodel = quantize_model(models.load_pretrained("small_cnn"), X_train[:1000], requant="float")
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form in FORMS:
            path = pathlib.Path(tmp) / f"{form}.onnx"
            to_onnx(qmodel, path, form=form)
            sessions[form] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), load {os.getloadavg()}")
    header = ["batch", "float32 us/img", "int8 integer ops", "int8 QDQ (fused)"]
    print("| " + " | ".join([*header, "integer / float", "QDQ / float"]) + " |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in BATCHES:
        feed = {"X": X_test[:batch]}  # (batch, 1, 28, 28)
        us = {}
        for form, session in sessions.items():
            session.run(None, feed)  # warm-up
            number = max(1, 256 // batch)
            runs = timeit.repeat(
                lambda s=session, f=feed: s.run(None, f), number=number, repeat=args.repeat
            )
            us[form] = min(runs) / number / batch * 1e6
        print(
            f"| {batch} | {us['float']:.1f} | {us['integer']:.1f} | {us['qdq']:.1f} "
            f"| {us['integer'] / us['float']:.1f}x | {us['qdq'] / us['float']:.2f}x |"
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
