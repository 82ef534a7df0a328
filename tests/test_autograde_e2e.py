"""End to end: real nbgrader grades adversarial submissions of 04_transposed_conv.

One temporary course (a copy of the notebook, the config and the references) is released, ten
submissions are built from the student version, and ``segcourse grade --jobs 2`` grades them
all in one batch. Each student's score says whether grading held:

- solutions earn everything, a blank notebook nothing;
- an exception, an infinite loop or a kernel crash (``os._exit``) in one exercise costs that
  exercise's points only;
- patching the assertion helpers (and ``segcourse.grading`` itself) in the kernel gains nothing;
- huge outputs, deleted / duplicated / retyped / edited cells and an invalid file never break
  the batch, and no submitted file is changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NAME = "04_transposed_conv"
FUNCTIONS = ["conv_matrix_1d", "conv_transpose1d", "conv_transpose2d", "transposed_output_size"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("autograde_e2e"),
    # the "vandal" submission duplicates a cell on purpose
    pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId"),
]

CHEAT = '''
import unittest, numpy.testing, torch, segcourse.grading as g
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
numpy.testing.assert_allclose = lambda *a, **k: None
numpy.testing.assert_array_equal = lambda *a, **k: None
unittest.TestCase.assertEqual = lambda *a, **k: None
g.compare = lambda *a, **k: None
g.verify = lambda *a, **k: (None, None)
g.check = lambda *a, **k: None
'''


def _solution_sources() -> dict[str, str]:
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _points() -> dict[str, float]:
    """grade_id -> points of every graded test cell in the instructor notebook."""
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: float(c.metadata["nbgrader"]["points"])
            for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade")}


def _points_of(function: str) -> float:
    return sum(p for gid, p in _points().items() if gid.split("_", 1)[1] == function)


def _solved(release: nbformat.NotebookNode, **replace: str) -> nbformat.NotebookNode:
    """The release notebook with every solution filled in (or replaced by ``replace[grade_id]``)."""
    notebook = nbformat.from_dict(json.loads(json.dumps(release)))  # deep copy
    solutions = _solution_sources()
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = replace.get(grade_id, solutions[grade_id])
    return notebook


def _index(notebook, grade_id: str) -> int:
    return next(i for i, c in enumerate(notebook.cells)
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _with_body(grade_id: str, statement: str) -> str:
    """The solution of ``grade_id`` whose function body starts with ``statement``."""
    source = _solution_sources()[grade_id]
    head, _, rest = source.partition('"""')
    doc, _, body = rest.partition('"""')
    return f'{head}"""{doc}"""\n    {statement}\n{body}'


def _students(release: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode | bytes]:
    students: dict[str, nbformat.NotebookNode | bytes] = {}
    students["perfect"] = _solved(release)
    students["blank"] = release
    students["exception"] = _solved(release, conv_transpose2d=_with_body(
        "conv_transpose2d", "raise ValueError('oops')"))
    students["infinite_loop"] = _solved(release, conv_transpose1d=_with_body(
        "conv_transpose1d", "while True: pass"))
    students["kernel_crash"] = _solved(release, transposed_output_size=(
        "import os\nos._exit(1)\n" + _solution_sources()["transposed_output_size"]))

    cheater = _solved(release, **{
        "conv_matrix_1d": "def conv_matrix_1d(kernel, in_len, stride=1, padding=0):\n"
                          "    return torch.zeros(in_len, in_len)\n",
        "conv_transpose1d": "def conv_transpose1d(x, kernel, stride=1, padding=0):\n"
                            "    return torch.zeros(3)\n",
        "conv_transpose2d": "def conv_transpose2d(x, weight, stride=1, padding=0, "
                            "output_padding=0, bias=None):\n    return x\n",
        "transposed_output_size": "def transposed_output_size(size, kernel, stride=1, padding=0, "
                                  "output_padding=0, dilation=1):\n    return 0\n",
    })
    cheater.cells.insert(1, nbformat.v4.new_code_cell(CHEAT))
    students["cheater"] = cheater

    huge = _solved(release)
    huge.cells.insert(1, nbformat.v4.new_code_cell(
        "for i in range(200_000):\n    print('spam', i)\nprint('x' * 5_000_000)"))
    students["huge_output"] = huge

    vandal = _solved(release)
    del vandal.cells[_index(vandal, "test_conv_matrix_1d")]          # deleted test cell
    vandal.cells[_index(vandal, "test_conv_transpose2d")].source = "pass"  # edited test cell
    vandal.cells[_index(vandal, "hidden_conv_transpose2d")].source = ""    # emptied test cell
    retyped = _index(vandal, "test_conv_transpose1d")
    vandal.cells[retyped] = nbformat.v4.new_markdown_cell(  # changed cell type
        vandal.cells[retyped].source, metadata=vandal.cells[retyped].metadata)
    duplicate = _index(vandal, "transposed_output_size")
    vandal.cells.insert(duplicate, nbformat.from_dict(json.loads(json.dumps(vandal.cells[duplicate]))))
    students["vandal"] = vandal

    students["invalid_file"] = b"this is not a notebook {"
    return students


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Release, build the submissions, grade them in one batch; returns (rows, course, ...)."""
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(REPO / "notebooks" / NAME, root / "notebooks" / NAME)
    (root / "autograder").mkdir()
    shutil.copy(REPO / "autograder" / "nbgrader_config.py", root / "autograder")
    shutil.copytree(REPO / "autograder" / "references", root / "autograder" / "references")
    env = dict(os.environ, SEGCOURSE_COURSE_DIR=str(root / "autograder"),
               SEGCOURSE_REFERENCES=str(root / "autograder" / "references"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    segcourse = [sys.executable, "-m", "segcourse.cli"]

    done = subprocess.run(segcourse + ["release", NAME], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    release_path = root / "autograder" / "release" / NAME / f"{NAME}.ipynb"
    release = nbformat.read(release_path, as_version=4)

    submitted = root / "inbox"
    for student, notebook in _students(release).items():
        folder = submitted / student / NAME
        folder.mkdir(parents=True)
        if isinstance(notebook, bytes):
            (folder / f"{NAME}.ipynb").write_bytes(notebook)
        else:
            nbformat.write(notebook, folder / f"{NAME}.ipynb")
    before = _digest(submitted)

    out = root / "grades.csv"
    done = subprocess.run(
        segcourse + ["grade", str(submitted), "--jobs", "2", "--out", str(out), "--timeout", "20"],
        env=env, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    return {"rows": rows, "root": root, "env": env, "before": before, "submitted": submitted,
            "release": release_path, "table": done.stdout}


def score(graded, student) -> float:
    return float(graded["rows"][student]["score"])


def max_score(graded) -> float:
    return float(graded["rows"]["perfect"]["max_score"])


def test_csv_has_one_row_per_submission_with_the_contract_columns(graded):
    assert set(graded["rows"]) == {"perfect", "blank", "exception", "infinite_loop",
                                   "kernel_crash", "cheater", "huge_output", "vandal",
                                   "invalid_file"}
    row = graded["rows"]["perfect"]
    assert {"student", "assignment", "score", "max_score"} <= set(row)
    assert row["assignment"] == NAME
    assert max_score(graded) == sum(_points().values())
    assert "perfect" in graded["table"]  # the printed table


def test_solutions_earn_full_marks(graded):
    assert score(graded, "perfect") == max_score(graded)


def test_blank_notebook_earns_nothing(graded):
    assert score(graded, "blank") == 0


@pytest.mark.parametrize("student,function", [
    ("exception", "conv_transpose2d"),
    ("infinite_loop", "conv_transpose1d"),
    ("kernel_crash", "transposed_output_size"),
])
def test_a_broken_exercise_costs_only_its_own_points(graded, student, function):
    assert score(graded, student) == max_score(graded) - _points_of(function), graded["rows"][student]


def test_kernel_crash_is_reported(graded):
    assert "crashed the kernel" in graded["rows"]["kernel_crash"]["status"]


def test_patching_assertions_and_grading_in_the_kernel_gains_nothing(graded):
    assert score(graded, "cheater") == 0


def test_huge_outputs_do_not_break_grading(graded):
    assert score(graded, "huge_output") == max_score(graded)


def test_vandalised_cells_cost_at_most_their_own_points(graded):
    """Edited, emptied and retyped test cells are restored from the source and graded; the
    duplicated solution cell is harmless; only the deleted test cell earns nothing."""
    lost = _points()["test_conv_matrix_1d"]
    assert score(graded, "vandal") == max_score(graded) - lost, graded["rows"]["vandal"]


def test_invalid_file_scores_zero_without_breaking_the_batch(graded):
    row = graded["rows"]["invalid_file"]
    assert float(row["score"]) == 0 and row["status"].startswith("error")


def test_no_submitted_file_was_changed(graded):
    assert _digest(graded["submitted"]) == graded["before"]


def test_release_has_no_solutions_no_hidden_tests_and_only_visible_references(graded):
    text = graded["release"].read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert f'"{NAME}.' in text and ".hidden\\\"" not in text
    for source in _solution_sources().values():
        body = source.split("### BEGIN SOLUTION")[-1].split("### END SOLUTION")[0].strip()
        assert body.splitlines()[0] not in text
    manifest = json.loads((graded["release"].parent / "references" / "manifest.json").read_text())
    checks = {entry["check"] for entry in manifest["references"]}
    assert checks and not any(check.endswith(".hidden") for check in checks)


def test_feedback_and_export_work_on_the_gradebook(graded):
    course = graded["root"] / "autograder"
    env = dict(graded["env"], SEGCOURSE_SUBMITTED_DIR=str(graded["submitted"]))
    nbgrader = [sys.executable, "-m", "nbgrader"]
    done = subprocess.run(nbgrader + ["generate_feedback", NAME, "--student", "perfect"],
                          cwd=course, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (course / "feedback" / "perfect" / NAME / f"{NAME}.html").exists()
    done = subprocess.run(nbgrader + ["export", "--to", "grades_export.csv"],
                          cwd=course, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "perfect" in (course / "grades_export.csv").read_text()


def test_validation_through_the_python_api(graded):
    """`nbgrader validate` exits 0 even when tests fail, so use its Python API: the solutions
    validate clean, and the released (blank) student version reports failing tests."""
    from nbgrader.validator import Validator

    validator = Validator()
    solved = validator.validate(str(REPO / "notebooks" / NAME / f"{NAME}.ipynb"))
    assert not solved.get("failed") and not solved.get("changed"), solved
    blank = validator.validate(str(graded["release"]))
    assert blank.get("failed"), "a blank student notebook must fail validation"
    visible = [grade_id for grade_id in _points() if grade_id.startswith("test_")]
    assert len(blank["failed"]) == len(visible)  # hidden tests are not in the release
    assert all("ot implemented" in str(failure) or "NotImplementedError" in str(failure)
               for failure in blank["failed"])
