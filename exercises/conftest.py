"""Test configuration of the graded exercises.

Which code the tests check:

* ``pytest exercises`` (or any path inside ``exercises/``): the learner's files,
  ``exercises/exN_*.py``;
* ``pytest exercises --solutions``: the reference answers, ``exercises/solutions/exN_*.py``.

When ``tests/`` is part of the run (a plain ``pytest`` from the repository root, which
reaches ``exercises/`` through ``testpaths``, or ``pytest tests exercises``), collecting
``exercises/tests/`` is skipped here, because ``tests/test_exercises.py`` runs both passes
above in subprocesses and checks that every solution passes and every untouched stub fails
with ``NotImplementedError``.

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


def _runs_the_project_tests(config: pytest.Config) -> bool:
    """Is tests/ part of this run (a plain `pytest`, `pytest tests exercises`, `pytest .`)?"""
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        return True
    root = EXERCISES_DIR.parent
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path in (root, root / "tests", root / "tests" / "test_exercises.py"):
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # NOTE: when tests/ is part of the run (a plain `pytest` gets its paths from testpaths),
    # the exercise tests run in tests/test_exercises.py (solutions must pass, stubs must
    # fail), not here; `pytest exercises` alone checks the learner's files.
    if collection_path == EXERCISES_DIR / "tests" and _runs_the_project_tests(config):
        return True
    return None


#: How a stub says it is not written yet: NotImplementedError("Exercise 1.1: qrange").
STUB_PREFIX = "Exercise "
#: The one-line failure of a test that reached an unwritten stub (and the JUnit message).
TODO_PREFIX = "NotImplementedError: Exercise "


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """A test that reaches an unwritten stub fails with one line, not the stub's traceback.

    "NotImplementedError: Exercise 1.1: implement qrange (exercises/ex1_uniform.py)"
    replaces a traceback that would print the stub's whole docstring for every test.
    """
    report = yield
    excinfo = call.excinfo
    if report.failed and excinfo is not None and excinfo.errisinstance(NotImplementedError):
        message = str(excinfo.value)
        if message.startswith(STUB_PREFIX) and ": " in message:
            exercise, name = message.split(": ", 1)
            where = Path(excinfo.traceback[-1].path)
            if where.is_relative_to(EXERCISES_DIR.parent):
                where = where.relative_to(EXERCISES_DIR.parent)
            report.longrepr = f"NotImplementedError: {exercise}: implement {name} ({where})"
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config):
    """List each unwritten stub once (with how many tests wait for it) instead of per test.

    The other failures keep pytest's usual report. The stub failures still count: the
    final line and the exit status are unchanged.
    """
    failed = terminalreporter.stats.get("failed", [])
    todo = [r for r in failed if str(r.longrepr).startswith(TODO_PREFIX)]
    if not todo:
        return (yield)
    waiting: dict[str, int] = {}
    for report in todo:
        message = str(report.longrepr).removeprefix("NotImplementedError: ")
        waiting[message] = waiting.get(message, 0) + 1
    terminalreporter.write_sep("=", "exercises still to write", yellow=True)
    for message, count in waiting.items():
        tests = "test waits" if count == 1 else "tests wait"
        terminalreporter.write_line(f"{message}: {count} {tests} for it")
    terminalreporter.stats["failed"] = [r for r in failed if r not in todo]
    try:
        return (yield)
    finally:
        terminalreporter.stats["failed"] = failed


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
