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
NUM_EXERCISES = 8

pytestmark = pytest.mark.slow


def run_exercise_tests(tmp_path: Path, *options: str) -> dict[str, ET.Element]:
    """Run ``pytest exercises`` in a subprocess; return its JUnit test cases by test id."""
    report = tmp_path / "report.xml"
    env = dict(os.environ)
    # NOTE: one BLAS thread keeps the small training step of exercise 8 fast on a busy CI.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    command = [sys.executable, "-m", "pytest", "exercises", "-q", f"--junitxml={report}"]
    result = subprocess.run(
        [*command, *options], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert report.exists(), f"pytest did not run:\n{result.stdout}\n{result.stderr}"
    cases = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cases[f"{case.get('classname')}::{case.get('name')}"] = case
    return cases


def exercise_cases(cases: dict[str, ET.Element]) -> dict[str, ET.Element]:
    """Only the tests of exercises/tests/ (not the doctest items of the exercise modules)."""
    return {k: v for k, v in cases.items() if k.startswith("exercises.tests.")}


@pytest.fixture(scope="module")
def solution_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ET.Element]:
    return exercise_cases(run_exercise_tests(tmp_path_factory.mktemp("solutions"), "--solutions"))


@pytest.fixture(scope="module")
def stub_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ET.Element]:
    return exercise_cases(run_exercise_tests(tmp_path_factory.mktemp("stubs")))


def test_every_exercise_has_tests(solution_cases):
    for i in range(1, NUM_EXERCISES + 1):
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


@pytest.mark.parametrize("i", range(1, NUM_EXERCISES + 1))
def test_stub_and_solution_share_the_spec(i):
    (stub,) = EXERCISES.glob(f"ex{i}_*.py")
    solution = EXERCISES / "solutions" / stub.name
    assert (EXERCISES / "tests" / f"test_{stub.name}").exists()
    assert public_api(stub) == public_api(solution)
    assert ast.get_docstring(ast.parse(stub.read_text())) == ast.get_docstring(
        ast.parse(solution.read_text())
    )
