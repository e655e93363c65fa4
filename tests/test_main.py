"""The command line: `python -m minquant --help` and the quick end-to-end demo."""

import subprocess
import sys

import pytest

from minquant.__main__ import DemoConfig, Row, _plot_summary, build_parser, format_table


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minquant", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_lists_demo():
    result = run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_demo_help_lists_options():
    result = run("demo", "--help")
    assert result.returncode == 0
    for option in ("--epochs", "--seed", "--quick", "--out"):
        assert option in result.stdout


def test_demo_help_is_plain_text_with_every_default():
    result = run("demo", "--help")
    assert "``" not in result.stdout  # no raw reST markup
    assert "tqdm bar per epoch" not in result.stdout
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option, default in (("--epochs", 10), ("--qat-epochs", 2), ("--seed", 0), ("--out", "out")):
        assert option in text
        assert f"(default: {default})" in text, option


def test_plot_goes_to_the_out_folder_by_default():
    assert DemoConfig().out.as_posix() == "out"  # listed in .gitignore as /out/


@pytest.mark.parametrize("losses", [[0.5], [1.2, 0.4, 0.2]])
def test_summary_plot_bars_start_at_zero_and_carry_their_values(losses):
    rows = [
        Row("FP32", 0.798, 80_000, 1000.0, None),
        Row("PTQ W8A8", 0.80, 20_000, 2000.0, 0.999),
        Row("QAT W4A4", 0.81, 10_000, 2000.0, 1.0),
    ]
    fig = _plot_summary(losses, rows)
    for ax in fig.axes:
        bars = ax.patches
        assert bars, ax.get_title()
        assert ax.get_ylim()[0] == 0, ax.get_title()
        assert max(bar.get_height() for bar in bars) <= ax.get_ylim()[1], ax.get_title()
        assert len(ax.texts) == len(bars), ax.get_title()  # a value printed on each bar
    assert [t.get_text() for t in fig.axes[1].texts] == ["79.8%", "80.0%", "81.0%"]


def test_unknown_command_fails():
    assert run("train-everything").returncode != 0


@pytest.mark.parametrize("option", ["--epochs", "--qat-epochs"])
def test_demo_rejects_zero_epochs(option):
    result = run("demo", option, "0")
    assert result.returncode != 0
    assert f"{option} must be >= 1, got 0" in result.stderr


def test_parser_defaults():
    args = build_parser().parse_args(["demo"])
    assert (args.epochs, args.qat_epochs, args.seed, args.quick) == (10, 2, 0, False)


def test_format_table():
    rows = [
        Row("FP32", 0.98, 80_000, 1000.0, None),
        Row("PTQ W8A8", 0.975, 20_000, 2000.0, 0.999),
    ]
    lines = format_table(rows).splitlines()
    assert lines[2] == "| FP32 | 98.0% | 80,000 | 100.0% | 1,000 | - |"
    assert lines[3] == "| PTQ W8A8 | 97.5% | 20,000 | 25.0% | 2,000 | 99.9% |"


def test_quick_demo_runs_end_to_end(tmp_path):
    result = run("demo", "--quick", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| FP32", "| PTQ W8A8", "| QAT W4A4"]
    # every stage ran and the integer models agree with their simulations
    accuracies = [float(line.split(" | ")[1].rstrip("%")) for line in table[1:]]
    assert all(a > 50.0 for a in accuracies), table
    assert (tmp_path / "out" / "minquant_demo.png").stat().st_size > 10_000
