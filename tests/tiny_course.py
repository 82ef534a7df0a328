"""A throwaway nbgrader course with one tiny notebook, for the grading-engine tests.

Its notebook (``90_tiny``) has one exercise (``add``), a visible test (2 points) and a hidden
test (1 point), so that a submission costs what grading itself costs (nbgrader, the sandbox, a
kernel) and little else. ``submission(...)`` builds student notebooks from its release: solved,
blank, wrong, or with a cell that sleeps (to catch a batch in the middle).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
NAME = "90_tiny"
SEGCOURSE = [sys.executable, "-m", "segcourse.cli"]


def _meta(grade_id: str, *, solution=False, grade=False, points=0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": 3,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return {"nbgrader": meta}


def instructor_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A tiny exercise\n\nWrite `add(a, b)`: the sum."),
        nbformat.v4.new_code_cell(
            "def add(a, b):\n    \"\"\"a + b.\"\"\"\n    ### BEGIN SOLUTION\n    return a + b\n"
            "    ### END SOLUTION", metadata=_meta("add", solution=True)),
        nbformat.v4.new_code_cell("assert add(1, 2) == 3",
                                  metadata=_meta("test_add", grade=True, points=2)),
        nbformat.v4.new_code_cell(
            "assert add(2, 2) == 4\n### BEGIN HIDDEN TESTS\nassert add(-1, 1) == 0\n"
            "### END HIDDEN TESTS", metadata=_meta("hidden_add", grade=True, points=1)),
    ]
    return nb


def make_course(root: Path) -> dict:
    """Lay out a course under ``root``, release it; returns the environment for its commands."""
    (root / "notebooks" / NAME).mkdir(parents=True)
    nbformat.write(instructor_notebook(), root / "notebooks" / NAME / f"{NAME}.ipynb")
    (root / "autograder" / "references").mkdir(parents=True)
    shutil.copy(REPO / "autograder" / "nbgrader_config.py", root / "autograder")
    (root / "autograder" / "references" / "manifest.json").write_text('{"references": []}\n')
    env = dict(os.environ, SEGCOURSE_COURSE_DIR=str(root / "autograder"),
               SEGCOURSE_REFERENCES=str(root / "autograder" / "references"),
               OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("SEGCOURSE_GRADEBOOK_URL", None)
    done = subprocess.run(SEGCOURSE + ["release", NAME], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return env


def release(root: Path) -> nbformat.NotebookNode:
    return nbformat.read(root / "autograder" / "release" / NAME / f"{NAME}.ipynb", as_version=4)


def submission(root: Path, kind: str = "solved", sleep: float = 0) -> nbformat.NotebookNode:
    """``solved`` (3 points), ``blank`` (0), ``wrong`` (0); ``sleep`` adds a cell that waits."""
    nb = release(root)
    body = {"solved": "    return a + b", "wrong": "    return a - b", "blank": None}[kind]
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "add" and body:
            cell.source = f"def add(a, b):\n{body}\n"
    if sleep:
        nb.cells.insert(1, nbformat.v4.new_code_cell(f"import time\ntime.sleep({sleep})"))
    return nb


def write_submissions(inbox: Path, root: Path, students: dict[str, tuple]) -> None:
    """``students``: name -> (kind, sleep)."""
    for student, (kind, sleep) in students.items():
        folder = inbox / student / NAME
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(submission(root, kind, sleep), folder / f"{NAME}.ipynb")


def grade(env: dict, inbox: Path, out: Path, *args: str, timeout: float = 900):
    done = subprocess.run(SEGCOURSE + ["grade", str(inbox), "--out", str(out), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def rows(out: Path) -> dict[str, dict]:
    return {row["student"]: row for row in csv.DictReader(out.open())}


def expected(kind: str) -> float:
    return {"solved": 3.0, "blank": 0.0, "wrong": 0.0}[kind]


def ledger(env: dict, url: str | None = None) -> dict:
    """The record of graded submissions: (student, assignment) -> (key, status, graded_at)."""
    code = ("import json,sys\nfrom segcourse.grader.gradebook import Ledger, db_url\n"
            "with Ledger(db_url(sys.argv[1] or None)) as l:\n"
            "    print(json.dumps({f'{s}/{a}': v for (s, a), v in l.lookup().items()}))")
    done = subprocess.run([sys.executable, "-c", code, url or ""], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def sandboxes_running(root: Path) -> bool:
    """A sandbox's tmpfs is mounted under the course (a kernel is being set up or runs)."""
    return str(root / "autograder" / ".grading") in Path("/proc/self/mounts").read_text()


def submissions_in_gradebook(env: dict, url: str | None = None) -> dict[tuple[str, str], int]:
    """(student, assignment) -> how many submissions the gradebook holds for it."""
    from sqlalchemy import create_engine, text

    url = url or f"sqlite:///{Path(env['SEGCOURSE_COURSE_DIR']) / 'gradebook.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(text(
                "select s.student_id, a.name, count(*) from submitted_assignment s "
                "join assignment a on s.assignment_id = a.id group by s.student_id, a.name"))
            return {(student, name): count for student, name, count in found}
    finally:
        engine.dispose()
