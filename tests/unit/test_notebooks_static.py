"""The notebooks stay thin and papermill-ready: checked without starting a kernel."""

import ast

import nbformat
import pytest

from modft_utils.runner import NOTEBOOKS

EXPECTED_PARAMETERS = {"profile": "str", "run_dir": "str", "overrides": "dict"}


@pytest.fixture(params=NOTEBOOKS)
def notebook(request, root):
    return request.param, nbformat.read(root / "notebooks" / f"{request.param}.ipynb", as_version=4)


def test_opens_with_title_then_imports_then_parameters(notebook):
    name, nb = notebook
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.parse(code[0].source).body)
    assert "parameters" in code[1].metadata.get("tags", [])


def test_parameters_are_typed_and_documented(notebook):
    name, nb = notebook
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    found = {n.target.id: ast.unparse(n.annotation) for n in tree.body if isinstance(n, ast.AnnAssign)}
    assert found == EXPECTED_PARAMETERS
    assert all("#" in line for line in cell.source.splitlines() if line.strip())


def test_no_function_or_class_definitions(notebook):
    name, nb = notebook
    for cell in nb.cells:
        if cell.cell_type == "code":
            tree = ast.parse(cell.source)
            defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            assert not defs, f"{name}: define functions in modft_utils, not in the notebook"


def test_records_results_and_has_checked_summary(notebook):
    name, nb = notebook
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("record.record(" in src for src in code)
    checked = [src for src in code if "NBVAL_CHECK_OUTPUT" in src]
    assert checked, f"{name} has no cell nbval checks"


def test_committed_outputs_are_only_the_checked_ones(notebook):
    name, nb = notebook
    for cell in nb.cells:
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            assert not cell.outputs, f"{name}: unchecked cell has committed outputs; run `make baseline`"
