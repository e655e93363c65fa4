"""`python -m minquant export MODEL --format onnx|npz -o PATH`."""

import subprocess
import sys

import numpy as np
import pytest

import minquant as mq
from minquant import models
from minquant.__main__ import main
from minquant.data import load_mnist
from minquant.export.cli import CALIB_SIZE
from minquant.ptq import quantize_model


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minquant", *args], capture_output=True, text=True, timeout=600
    )


def test_help_lists_export_and_its_options():
    assert "export" in run("--help").stdout
    result = run("export", "--help")
    assert result.returncode == 0
    for text in ("small_cnn", "--format", "{npz,onnx,gguf}", "--form", "-o OUTPUT"):
        assert text in result.stdout


def test_npz_is_the_ptq_default_model(tmp_path, capsys):
    path = tmp_path / "small_cnn.npz"
    assert main(["export", "small_cnn", "--format", "npz", "-o", str(path)]) == 0
    assert f"wrote {path}: small_cnn W8A8, minquant npz" in capsys.readouterr().out
    X_train, _ = load_mnist("train")
    X_test, _ = load_mnist("test")
    expected = quantize_model(models.load_pretrained("small_cnn"), X_train[:CALIB_SIZE])
    loaded = mq.load(path)
    assert loaded.config == expected.config
    np.testing.assert_array_equal(loaded.forward_int(X_test), expected.forward_int(X_test))


def test_onnx_from_the_command_line(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the onnx package (dev extra) writes ONNX")
    path = tmp_path / "small_cnn.onnx"
    result = run("export", "small_cnn", "--format", "onnx", "--form", "qdq", "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert "ONNX (qdq form)" in result.stdout
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert "QuantizeLinear" in ops and "ConvInteger" not in ops


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "small_cnn", "-o", "x"], "the following arguments are required: --format"),
        (["export", "resnet50", "--format", "npz", "-o", "x"], "invalid choice: 'resnet50'"),
        (["export", "small_cnn", "--format", "tflite", "-o", "x"], "invalid choice: 'tflite'"),
    ],
)
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gguf_is_for_the_language_model_only(tmp_path):
    with pytest.raises(SystemExit, match="--format gguf is for tiny_lm"):
        main(["export", "small_cnn", "--format", "gguf", "-o", str(tmp_path / "x.gguf")])
    with pytest.raises(SystemExit, match="got tiny_lm with --format onnx"):
        main(["export", "tiny_lm", "--format", "onnx", "-o", str(tmp_path / "x.onnx")])


def test_npz_of_the_weight_only_language_model(tmp_path, capsys):
    path = tmp_path / "tiny_lm.npz"
    assert main(["export", "tiny_lm", "--format", "npz", "--bits", "3", "-o", str(path)]) == 0
    assert f"wrote {path}: tiny_lm, W3 g64 weight-only, minquant npz" in capsys.readouterr().out
    expected = mq.llm.quantize_weights(models.load_pretrained("tiny_lm"), bits=3, group_size=64)
    tokens = mq.data.encode(mq.data.load_text("val")[:128])[None]  # (1, 128)
    np.testing.assert_array_equal(mq.load(path)(tokens), expected(tokens))
    with pytest.raises(SystemExit, match="group_size"):
        main(["export", "tiny_lm", "--format", "npz", "--group-size", "100", "-o", str(path)])


def test_gguf_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("gguf", reason="the gguf package (dev extra) writes GGUF files")
    path = tmp_path / "tiny_lm.gguf"
    assert (
        main(["export", "tiny_lm", "--format", "gguf", "--gguf-type", "q4_0", "-o", str(path)]) == 0
    )
    assert f"wrote {path}: tiny_lm, GGUF (q4_0)" in capsys.readouterr().out
    assert path.read_bytes()[:4] == b"GGUF"
