"""Test configuration of the graded exercises.

Which code the tests check:

* ``pytest exercises`` (or any path inside ``exercises/``): the learner's files,
  ``exercises/exN_*.py``;
* ``pytest exercises --solutions``: the reference answers, ``exercises/solutions/exN_*.py``.

A plain ``pytest`` from the repository root reaches ``exercises/`` only through
``testpaths``; it then skips collecting ``exercises/tests/`` here, because
``tests/test_exercises.py`` runs both passes above in subprocesses and checks that every
solution passes and every untouched stub fails with ``NotImplementedError``.

Each test module ``exercises/tests/test_exN_name.py`` gets the module under test from the
``ex`` fixture (``exercises.exN_name`` or ``exercises.solutions.exN_name``) and carries the
marker ``exN``, so ``pytest exercises -m ex3`` checks one exercise.
"""

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

EXERCISES_DIR = Path(__file__).parent


def exercise_numbers() -> list[int]:
    """The numbers N of the learner files ``exercises/exN_*.py``, in order.

    Found from the files, so that a new exercise registers its marker by existing.
    """
    names = (path.name for path in EXERCISES_DIR.glob("ex[0-9]*_*.py"))
    return sorted({int(name[2:].split("_", 1)[0]) for name in names})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--solutions",
        action="store_true",
        default=False,
        help="exercises: test the reference answers in exercises/solutions/ "
        "instead of the learner's files",
    )


def pytest_configure(config: pytest.Config) -> None:
    for i in exercise_numbers():
        config.addinivalue_line("markers", f"ex{i}: exercise {i} (pytest exercises -m ex{i})")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # NOTE: a plain `pytest` gets its paths from testpaths; the exercise tests then run in
    # tests/test_exercises.py (solutions must pass, stubs must fail), not here.
    from_testpaths = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    if from_testpaths and collection_path == EXERCISES_DIR / "tests":
        return True
    return None


@pytest.fixture(scope="module")
def ex(request: pytest.FixtureRequest) -> ModuleType:
    """The module under test: ``test_ex3_calibration.py`` checks ``ex3_calibration.py``."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    package = "exercises.solutions" if request.config.getoption("solutions") else "exercises"
    return importlib.import_module(f"{package}.{name}")


@pytest.fixture
def forbid(monkeypatch: pytest.MonkeyPatch, ex: ModuleType) -> Callable[..., None]:
    """Make library functions raise while the learner's code runs.

    ``forbid(minquant.quant.quantize, ...)`` replaces each function on the module that
    defines it, on every loaded ``minquant`` module that re-exports it and on the exercise
    module (where ``from minquant.quant import quantize`` would have bound it), so an answer
    that only calls the library cannot pass.
    """

    def _forbid(*functions: Callable) -> None:
        for function in functions:
            qualname = f"{function.__module__}.{function.__qualname__}"

            def shortcut(*args: object, _name: str = qualname, **kwargs: object) -> None:
                raise AssertionError(
                    f"the exercise must be solved without calling {_name}; write it with NumPy"
                )

            owner: object = importlib.import_module(function.__module__)
            path = function.__qualname__.split(".")
            for part in path[:-1]:
                owner = getattr(owner, part)
            monkeypatch.setattr(owner, path[-1], shortcut)
            namespaces = [m for n, m in sys.modules.items() if n.split(".")[0] == "minquant"]
            for namespace in [*namespaces, ex]:
                for attr, value in list(vars(namespace).items()):
                    if value is function:
                        monkeypatch.setattr(namespace, attr, shortcut)

    return _forbid
