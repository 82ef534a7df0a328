"""Run a notebook's test cells against any implementation, without nbgrader.

Used to show that independent correct implementations earn every point and that common
mistakes lose some: the test cells (hidden tests included) are executed in a namespace made by
the notebook's setup cell, with the function under test bound to the implementation given.
"""

from __future__ import annotations

import json
from pathlib import Path

from segcourse.grading import CheckFailed

REPO = Path(__file__).resolve().parent.parent


def notebook_cells(name: str) -> list[dict]:
    path = REPO / "notebooks" / name / f"{name}.ipynb"
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def setup_namespace(name: str) -> dict:
    """Execute the notebook's first code cell (its setup cell) and return the namespace."""
    setup = next(c for c in notebook_cells(name) if c["cell_type"] == "code")
    namespace: dict = {}
    code = "\n".join(line for line in _source(setup).splitlines()
                     if not line.lstrip().startswith(("%", "!")))
    exec(compile(code, f"{name}:setup", "exec"), namespace)
    return namespace


def solution_namespace(name: str, grade_id: str) -> dict:
    """The setup namespace after executing the notebook's solution cell ``grade_id``.

    Gives the instructor's own solution (or a class with its given ``__init__``) to a test.
    """
    cell = next(c for c in notebook_cells(name)
                if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id)
    namespace = setup_namespace(name)
    exec(compile(_source(cell), f"{name}:{grade_id}", "exec"), namespace)
    return namespace


def test_cells(name: str, function: str) -> dict[str, str]:
    """grade_id -> source of the graded test cells that exercise ``function``."""
    cells = {}
    for cell in notebook_cells(name):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution") and cell["cell_type"] == "code":
            source = _source(cell)
            if meta["grade_id"] in (f"test_{function}", f"hidden_{function}"):
                cells[meta["grade_id"]] = source
    return cells


def run_test_cells(name: str, function: str, implementation, extra: dict | None = None) -> dict:
    """Run every test cell of ``function`` with ``implementation``.

    Returns ``{grade_id: None if passed, else the failure message}``.
    """
    cells = test_cells(name, function)
    assert cells, f"no test cells found for {function} in {name}"
    outcome = {}
    for grade_id, source in cells.items():
        namespace = setup_namespace(name)
        namespace.update(extra or {})
        namespace[function] = implementation
        try:
            exec(compile(source, f"{name}:{grade_id}", "exec"), namespace)
            outcome[grade_id] = None
        except (CheckFailed, AssertionError, Exception) as error:
            outcome[grade_id] = f"{type(error).__name__}: {error}"
    return outcome


def assert_all_pass(name: str, function: str, implementation, extra: dict | None = None) -> None:
    """``implementation`` passes the visible and the hidden test cell of ``function``."""
    outcome = run_test_cells(name, function, implementation, extra)
    assert set(outcome) == {f"test_{function}", f"hidden_{function}"}, outcome
    failures = {grade_id: error for grade_id, error in outcome.items() if error}
    assert not failures, failures


def assert_hidden_fails(name: str, function: str, implementation, extra: dict | None = None):
    """A mistake loses points: the hidden test cell (at least) fails."""
    outcome = run_test_cells(name, function, implementation, extra)
    assert outcome[f"hidden_{function}"] is not None, outcome
