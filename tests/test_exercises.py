"""The graded exercises: every solution passes, every untouched stub fails.

A plain ``pytest`` does not collect ``exercises/tests/`` itself (see
``exercises/conftest.py``); this module runs the exercise tests twice in subprocesses, as a
learner and an instructor would:

* ``pytest exercises --solutions``: every test passes (none skipped);
* ``pytest exercises``: against the stubs every single test fails, and fails with the
  stub's ``NotImplementedError``, so no check passes without an answer.

It also checks that each stub matches its solution: same public functions and classes,
same signatures and docstrings (the docstring is the learner's spec).
"""

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
#: The exercise numbers, found from the learner files exercises/exN_*.py.
EXERCISE_NUMBERS = sorted(
    {int(path.name[2:].split("_", 1)[0]) for path in EXERCISES.glob("ex[0-9]*_*.py")}
)

pytestmark = pytest.mark.slow


def start_exercise_tests(report: Path, *options: str) -> subprocess.Popen:
    """Start ``pytest exercises`` in a subprocess that writes a JUnit report."""
    env = dict(os.environ)
    # NOTE: one BLAS thread each: the two runs go side by side, and the small training
    # step of exercise 8 is faster single-threaded than with oversubscribed cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    command = [sys.executable, "-m", "pytest", "exercises", "-q", f"--junitxml={report}"]
    return subprocess.Popen(
        [*command, *options],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def exercise_cases(process: subprocess.Popen, report: Path) -> dict[str, ET.Element]:
    """Wait for a run; return the test cases of exercises/tests/ by test id."""
    output, _ = process.communicate()
    assert report.exists(), f"pytest did not run:\n{output}"
    cases = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        case_id = f"{case.get('classname')}::{case.get('name')}"
        # NOTE: the exercise modules are also collected for doctests; they have none.
        if case_id.startswith("exercises.tests."):
            cases[case_id] = case
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, ET.Element]]:
    """Both passes, run side by side: ``--solutions`` and the stubs."""
    tmp = tmp_path_factory.mktemp("exercises")
    solutions = start_exercise_tests(tmp / "solutions.xml", "--solutions")
    stubs = start_exercise_tests(tmp / "stubs.xml")
    return {
        "solutions": exercise_cases(solutions, tmp / "solutions.xml"),
        "stubs": exercise_cases(stubs, tmp / "stubs.xml"),
    }


@pytest.fixture(scope="module")
def solution_cases(runs: dict[str, dict[str, ET.Element]]) -> dict[str, ET.Element]:
    return runs["solutions"]


@pytest.fixture(scope="module")
def stub_cases(runs: dict[str, dict[str, ET.Element]]) -> dict[str, ET.Element]:
    return runs["stubs"]


def test_every_exercise_has_tests(solution_cases):
    assert len(EXERCISE_NUMBERS) >= 9
    for i in EXERCISE_NUMBERS:
        assert any(f".test_ex{i}_" in case_id for case_id in solution_cases), f"exercise {i}"


def test_solutions_pass(solution_cases):
    assert len(solution_cases) > 100
    problems = {
        case_id: [child.tag for child in case]
        for case_id, case in solution_cases.items()
        if any(child.tag in ("failure", "error", "skipped") for child in case)
    }
    assert not problems, f"solutions must pass every test: {problems}"


def test_stubs_fail_every_test_with_not_implemented_error(solution_cases, stub_cases):
    assert stub_cases.keys() == solution_cases.keys()
    for case_id, case in stub_cases.items():
        outcomes = [child for child in case if child.tag in ("failure", "error", "skipped")]
        assert [o.tag for o in outcomes] == ["failure"], f"{case_id}: {[o.tag for o in outcomes]}"
        message = outcomes[0].get("message", "")
        assert message.startswith("NotImplementedError: Exercise "), f"{case_id}: {message}"


def public_api(path: Path) -> dict[str, tuple[str, str | None]]:
    """Public functions, classes and methods: name -> (signature source, docstring)."""
    tree = ast.parse(path.read_text())
    api = {}

    def add(node: ast.AST, prefix: str) -> None:
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.ClassDef)) and not item.name.startswith("_"):
                name = prefix + item.name
                signature = ast.unparse(item.args) if isinstance(item, ast.FunctionDef) else ""
                returns = ast.unparse(item.returns) if getattr(item, "returns", None) else ""
                api[name] = (f"({signature}) -> {returns}", ast.get_docstring(item))
                if isinstance(item, ast.ClassDef):
                    add(item, name + ".")

    add(tree, "")
    return api


@pytest.mark.parametrize("i", EXERCISE_NUMBERS)
def test_stub_and_solution_share_the_spec(i):
    (stub,) = EXERCISES.glob(f"ex{i}_*.py")
    solution = EXERCISES / "solutions" / stub.name
    assert (EXERCISES / "tests" / f"test_{stub.name}").exists()
    assert public_api(stub) == public_api(solution)
    assert ast.get_docstring(ast.parse(stub.read_text())) == ast.get_docstring(
        ast.parse(solution.read_text())
    )
