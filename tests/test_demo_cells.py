"""Cells tagged ``demo`` are skipped while grading: the grades must not notice.

A code cell that only demonstrates (a training run, an experiment, a figure, an explorer, a
timing) carries the tag ``demo``; ``SafeExecute`` does not run it while autograding and reference
runs skip it (``segcourse.grader.record``). This file holds that to account for every instructor
notebook:

- structure (fast): no graded or solution cell, and no ``grading.check`` call, is tagged
  ``demo`` (a graded cell can never be skipped); no name that a demo cell defines is used by a
  later non-demo cell (a simple AST analysis of the names each cell binds and reads before
  binding them), so skipping the demo cells leaves every later cell with the names it needs;
- result (slow, one test per notebook that has demo cells): the solution notebook executed
  WITHOUT its demo cells, in the record mode that saves every check's outputs, produces every
  check id of the notebook, and each verifies against the references: full marks, as with them
  (nbval runs the full notebook, demo cells included, against the same references).

Run ``python tests/test_demo_cells.py NN_slug`` to print, for one notebook, which cells are
demo, which the graded cells need (so must not be), and the dependency problems.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from segcourse.grader.course import cell_source, check_ids_in_notebook
from segcourse.grader.record import DEMO_TAG, SKIP_TAG
from segcourse.verify import CHECK_CALL_PATTERN

REPO = Path(__file__).resolve().parent.parent

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    import json

    return json.loads(path.read_text())["cells"]


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _graded(cell: dict) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("grade") or meta.get("solution"))


def _is_demo(cell: dict) -> bool:
    return cell.get("cell_type") == "code" and DEMO_TAG in _tags(cell)


def demo_notebooks() -> list[Path]:
    return [path for path in NOTEBOOKS if any(map(_is_demo, _cells(path)))]


# --------------------------------------------------------------------------------------------
# Which names a cell binds, and which it reads before binding them
# --------------------------------------------------------------------------------------------

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


class _Scope:
    """Names bound so far, names read before being bound (``free``) and names read by function
    bodies (``deferred``: read when called, so a binding later in the cell counts)."""

    def __init__(self, bound=()):
        self.bound: set[str] = set(bound)
        self.free: set[str] = set()
        self.deferred: set[str] = set()

    def load(self, name: str) -> None:
        if name not in self.bound:
            self.free.add(name)


def _arguments(args: ast.arguments) -> set[str]:
    every = args.posonlyargs + args.args + args.kwonlyargs
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return {a.arg for a in every}


def _function(node, scope: _Scope) -> None:
    """A function's or lambda's body reads globals when it is called."""
    for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
        _expr(default, scope)
    inner = _Scope(_arguments(node.args))
    if isinstance(node, ast.Lambda):
        _expr(node.body, inner)
    else:
        for decorator in node.decorator_list:
            _expr(decorator, scope)
        _stmts(node.body, inner)
    scope.deferred |= inner.free | inner.deferred


def _expr(node, scope: _Scope) -> None:
    if node is None:
        return
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load):
            scope.load(node.id)
        else:
            scope.bound.add(node.id)
    elif isinstance(node, ast.NamedExpr):
        _expr(node.value, scope)
        scope.bound.add(node.target.id)
    elif isinstance(node, ast.Lambda):
        _function(node, scope)
    elif isinstance(node, _COMPREHENSIONS):
        inner = _Scope(scope.bound)
        for generator in node.generators:
            _expr(generator.iter, inner)
            _expr(generator.target, inner)
            for condition in generator.ifs:
                _expr(condition, inner)
        for part in ((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,)):
            _expr(part, inner)
        scope.free |= inner.free
        scope.deferred |= inner.deferred
    else:
        _children(node, scope)


def _children(node, scope: _Scope) -> None:
    """Visit a node's children: statements as statements, everything else as expressions."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
            _stmt(child, scope)
        else:
            _expr(child, scope)


def _stmts(statements, scope: _Scope) -> None:
    for statement in statements:
        _stmt(statement, scope)


def _stmt(node, scope: _Scope) -> None:
    if isinstance(node, _FUNCTIONS):
        _function(node, scope)
        scope.bound.add(node.name)
    elif isinstance(node, ast.ClassDef):
        for part in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            _expr(part, scope)
        inner = _Scope(scope.bound)
        _stmts(node.body, inner)
        scope.free |= inner.free
        scope.deferred |= inner.deferred
        scope.bound.add(node.name)
    elif isinstance(node, ast.Assign):
        _expr(node.value, scope)
        for target in node.targets:
            _expr(target, scope)
    elif isinstance(node, ast.AnnAssign):
        _expr(node.value, scope)
        _expr(node.target, scope)
    elif isinstance(node, ast.AugAssign):
        _expr(node.value, scope)
        if isinstance(node.target, ast.Name):
            scope.load(node.target.id)
        _expr(node.target, scope)
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        _expr(node.iter, scope)
        _expr(node.target, scope)
        _stmts(node.body + node.orelse, scope)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            if alias.name != "*":
                scope.bound.add(alias.asname or alias.name.split(".")[0])
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            _expr(item.context_expr, scope)
            _expr(item.optional_vars, scope)
        _stmts(node.body, scope)
    elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
        _stmts(node.body, scope)
        for handler in node.handlers:
            _expr(handler.type, scope)
            if handler.name:
                scope.bound.add(handler.name)
            _stmts(handler.body, scope)
        _stmts(node.orelse + node.finalbody, scope)
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
        return
    else:
        _children(node, scope)


def cell_names(source: str) -> tuple[set[str], set[str]]:
    """``(defined, used)`` of a code cell: the names it binds at its top level, and the names
    it reads that it has not bound before reading them (function bodies: not bound anywhere in
    the cell). IPython magics and shell lines are ignored, as reference runs do."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    scope = _Scope()
    _stmts(ast.parse("\n".join(lines)).body, scope)
    return set(scope.bound), scope.free | (scope.deferred - scope.bound)


def demo_problems(cells: list[dict]) -> list[str]:
    """What makes the notebook's demo tags wrong: a demo cell that is graded, a solution or
    holds a check, and a later non-demo cell that uses a name last bound by a demo cell."""
    problems, last_bound = [], {}
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = cell_source(cell)
        demo = _is_demo(cell)
        if demo and _graded(cell):
            problems.append(f"cell {index} is a graded or solution cell tagged {DEMO_TAG!r}: "
                            "graded cells are never skipped; remove the tag")
        if demo and CHECK_CALL_PATTERN.search(source):
            problems.append(f"cell {index} calls grading.check but is tagged {DEMO_TAG!r}")
        defined, used = cell_names(source)
        if not demo:
            for name in sorted(used):
                if name in last_bound and _is_demo(cells[last_bound[name]]):
                    problems.append(
                        f"cell {index} uses {name!r}, which demo cell {last_bound[name]} defines: "
                        f"skipped while grading, so define {name!r} in a cell that is not demo "
                        "(or tag this cell demo too)")
        for name in defined:
            last_bound[name] = index
    return problems


def needed_by_graded(cells: list[dict]) -> set[int]:
    """Code cells that a graded or solution cell depends on through the names they bind
    (transitively): the cells that can never be demo."""
    needed, wanted = set(), set()
    for index in range(len(cells) - 1, -1, -1):
        cell = cells[index]
        if cell.get("cell_type") != "code":
            continue
        defined, used = cell_names(cell_source(cell))
        if _graded(cell) or defined & wanted:
            if not _graded(cell):
                needed.add(index)
            wanted = (wanted - defined) | used
    return needed


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_the_name_analysis():
    defined, used = cell_names(
        "import torch as T\n%matplotlib inline\n"
        "x = f(y)\nfor i in range(n):\n    total += i\n"
        "def g(a):\n    return a + h(b)\n"
        "def h(c):\n    return c\n"
        "z = [k * w for k in ks]\nmodel = model.eval()\n"
        "class M(Base):\n    size = s\n"
        "with open(p) as handle:\n    text = handle.read()\n"
        "lam = lambda q: q + r\n"
    )
    assert defined == {"T", "x", "i", "total", "g", "h", "z", "model", "M", "handle", "text",
                       "lam"}
    assert used == {"f", "y", "range", "n", "total", "b", "w", "ks", "model", "Base", "s",
                    "open", "p", "r"}


def _code(source: str, tags=(), **nbgrader) -> dict:
    metadata = {"tags": list(tags)}
    if nbgrader:
        metadata["nbgrader"] = nbgrader
    return {"cell_type": "code", "source": source, "metadata": metadata}


def test_problems_are_reported():
    cells = [
        _code("from segcourse import grading\ndata = load()"),
        _code("model = train(data)\nloss_curve = []", tags=["demo"]),
        _code("print(model)"),                               # needs the demo cell's model
        _code("model = build()\nprint(model)"),              # defines its own: fine
        _code("plot(loss_curve)", tags=["demo"]),            # demo after demo: fine
        _code('grading.check("07_losses.x", f, cases=[])', tags=["demo"], grade=True),
        _code("def f(x):\n    return x", tags=["demo"], solution=True),
    ]
    problems = demo_problems(cells)
    assert len(problems) == 4, problems
    assert "cell 2 uses 'model'" in problems[0]
    assert "cell 5 is a graded" in problems[1] and "cell 5 calls grading.check" in problems[2]
    assert "cell 6 is a graded" in problems[3]
    assert needed_by_graded(cells) == {0}


def test_reference_runs_skip_demo_cells(tmp_path):
    import nbformat

    from segcourse.grader.record import notebook_code

    cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("train()"),
             nbformat.v4.new_code_cell("explore()")]
    cells[1].metadata["tags"], cells[2].metadata["tags"] = [DEMO_TAG], [SKIP_TAG]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    assert "x = 1" in notebook_code(path) and "train()" not in notebook_code(path)
    assert "explore()" not in notebook_code(path)
    assert "train()" in notebook_code(path, skip_tags=(SKIP_TAG,))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_demo_tags_are_consistent(path):
    """No graded cell is demo; nothing a later non-demo cell uses is defined in a demo cell;
    a demo cell is a code cell."""
    cells = _cells(path)
    problems = demo_problems(cells)
    problems += [f"cell {i} is {cell['cell_type']} but tagged {DEMO_TAG!r} (code cells only)"
                 for i, cell in enumerate(cells)
                 if cell.get("cell_type") != "code" and DEMO_TAG in _tags(cell)]
    assert not problems, f"{path.stem}:\n" + "\n".join(problems)


@pytest.mark.slow
@pytest.mark.parametrize("path", demo_notebooks(), ids=lambda path: path.stem)
def test_graded_result_is_the_same_without_demo_cells(path, tmp_path):
    """The solutions, run without demo cells in record mode, save every check's outputs and
    each matches its reference (full marks): the graded result does not need the demo cells."""
    import torch

    from segcourse.grader.course import references_root
    from segcourse.grader.record import run_notebook_code
    from segcourse.verify import verify

    results = tmp_path / "results"
    done = run_notebook_code(path, results, device="cpu", skip_tags=(SKIP_TAG, DEMO_TAG),
                             capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (f"{path.stem} fails without its demo cells:\n"
                                  f"{done.stderr[-3000:]}")
    problems = []
    for check_id in check_ids_in_notebook(path):
        saved_path = results / f"{check_id}.pt"
        if not saved_path.is_file():
            problems.append(f"{check_id}: not run without the demo cells")
            continue
        saved = torch.load(saved_path, weights_only=True)
        problem, _, _ = verify(check_id, saved, saved["device"], references_root())
        if problem:
            problems.append(f"{check_id}: {problem}")
    assert not problems, "\n".join(problems)


def _report(name: str) -> None:
    """Print a notebook's demo cells, the cells graded cells need, and any problems."""
    (path,) = [p for p in NOTEBOOKS if p.stem == name]
    cells = _cells(path)
    needed = needed_by_graded(cells)
    for index, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        kind = ("graded" if _graded(cell) else "needed" if index in needed
                else "DEMO" if _is_demo(cell) else "-")
        first = cell_source(cell).strip().splitlines()[0][:70] if cell_source(cell).strip() else ""
        print(f"{index:4} {kind:7} {first}")
    print("\n".join(demo_problems(cells)) or "no problems")


if __name__ == "__main__":
    for notebook in sys.argv[1:]:
        _report(notebook)
