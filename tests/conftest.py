"""Shared test configuration: hypothesis profile and the optional torch oracle."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from hypothesis import settings

# NOTE: deadline=None because the first call of a jitted kernel includes its compilation.
settings.register_profile("minquant", deadline=None, max_examples=200, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minquant"))

HAS_TORCH = importlib.util.find_spec("torch") is not None

# NOTE: tests/fixtures/make_*.py are the scripts that froze the golden vectors from the
# oracles (torch, ml_dtypes, gguf); they are run by hand, not collected (not even for
# doctests), so that a machine without an oracle can still collect every test.
collect_ignore_glob = ["fixtures/*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="PyTorch (the oracle) is not installed: pip install torch")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_without_jit() -> Callable[[str], None]:
    """Run a Python script in a fresh interpreter with NUMBA_DISABLE_JIT=1; it must print ok."""

    def run(script: str) -> None:
        env = dict(os.environ, NUMBA_DISABLE_JIT="1")
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"

    return run
