"""Structure of the committed notebooks; nbval (``pytest --nbval``) re-runs their outputs.

These checks catch what nbval cannot: a notebook committed without outputs or from a
stale, out-of-order run, an error output, and the course conventions (objectives first,
``import minquant``, a seeded ``rng``, no library code defined in a notebook, "check your
understanding" questions and a pointer to the exercises at the end).
"""

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_000_000


def _load(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _python(cell: dict) -> str:
    """Cell source with IPython magics and shell escapes blanked out, ready for ``ast``."""
    lines = _source(cell).splitlines()
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)


def test_the_first_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for expected in (
        "00_photograph_analogy.ipynb",
        "01_number_formats.ipynb",
        "02_uniform_quantization.ipynb",
    ):
        assert expected in names


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request) -> tuple[Path, dict]:
    return request.param, _load(request.param)


def test_name_and_size(notebook):
    path, _ = notebook
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes"


def test_committed_with_outputs_from_one_clean_run(notebook):
    path, nb = notebook
    cells = _code_cells(nb)
    counts = [c.get("execution_count") for c in cells]
    assert None not in counts, f"{path.name}: some code cells were never executed"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(cells)} in order "
        "(stale or partial run: re-run with `jupyter nbconvert --to notebook --execute --inplace`)"
    )
    assert any(c["outputs"] for c in cells), f"{path.name} has no outputs at all"


def test_no_error_outputs(notebook):
    path, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        for out in cell["outputs"]:
            assert out["output_type"] != "error", (
                f"{path.name}, code cell {i}: {out.get('ename')}: {out.get('evalue')}"
            )


def test_opens_with_objectives_and_prerequisites(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown", f"{path.name} must open with a markdown cell"
    text = _source(first).lower()
    assert text.startswith("# "), f"{path.name}: the first cell needs a '# title'"
    assert "learning objectives" in text and "prerequisites" in text, path.name


def test_ends_with_questions_and_an_exercise_pointer(notebook):
    path, nb = notebook
    markdown = [_source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    tail = markdown[-1].lower()
    assert "check your understanding" in tail, f"{path.name}: the last markdown cell"
    assert "exercises/readme.md" in tail, f"{path.name} must point at exercises/README.md"


def test_imports_minquant_seeds_rng_and_sets_inline_backend(notebook):
    path, nb = notebook
    cells = _code_cells(nb)
    code = "\n".join(_source(c) for c in cells)
    assert re.search(r"^\s*(import minquant|from minquant)", code, re.M), path.name
    assert "rng = np.random.default_rng(0)" in code, path.name
    # NOTE: CI exports MPLBACKEND=Agg; without the magic plots would vanish from the outputs.
    uses_matplotlib = "matplotlib" in code or "viz." in code
    if uses_matplotlib:
        assert "%matplotlib inline" in _source(cells[0]), (
            f"{path.name}: put `%matplotlib inline` in the first code cell"
        )


def test_no_library_code_in_notebooks(notebook):
    path, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        tree = ast.parse(_python(cell))
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), (
                f"{path.name}, code cell {i} defines {node.name!r}: helpers belong in minquant "
                "(with a docstring, doctest and test), not in a notebook"
            )


def test_no_trailing_semicolons(notebook):
    """nbval ignores a trailing ``;``: the silenced repr (``<matplotlib.legend.Legend at
    0x7f...>``) reappears in the fresh run and the cell fails. End with ``plt.show()``."""
    path, nb = notebook
    for i, cell in enumerate(_code_cells(nb)):
        lines = [line for line in _source(cell).splitlines() if line.strip()]
        assert not (lines and lines[-1].rstrip().endswith(";")), (
            f"{path.name}, code cell {i} ends with ';': end it with plt.show() or an assignment"
        )


def test_structure_checks_catch_bad_notebooks():
    """The checks above must be able to fail: run them on doctored copies."""
    path = NOTEBOOKS[0]
    nb = _load(path)
    stale = json.loads(json.dumps(nb))
    code = _code_cells(stale)
    code[0]["execution_count"], code[1]["execution_count"] = 2, 1
    with pytest.raises(AssertionError, match="not 1"):
        test_committed_with_outputs_from_one_clean_run((path, stale))
    unexecuted = json.loads(json.dumps(nb))
    for cell in _code_cells(unexecuted):
        cell["execution_count"], cell["outputs"] = None, []
    with pytest.raises(AssertionError, match="never executed"):
        test_committed_with_outputs_from_one_clean_run((path, unexecuted))
    broken = json.loads(json.dumps(nb))
    error = {"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": []}
    _code_cells(broken)[-1]["outputs"].append(error)
    with pytest.raises(AssertionError, match="ValueError"):
        test_no_error_outputs((path, broken))
    with_def = json.loads(json.dumps(nb))
    _code_cells(with_def)[-1]["source"] = "def helper(x):\n    return x\n"
    with pytest.raises(AssertionError, match="defines 'helper'"):
        test_no_library_code_in_notebooks((path, with_def))
    _code_cells(with_def)[-1]["source"] = "ax.legend();"
    with pytest.raises(AssertionError, match="ends with ';'"):
        test_no_trailing_semicolons((path, with_def))
