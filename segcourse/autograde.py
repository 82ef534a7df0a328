"""Release and autograde with nbgrader: the engine of ``segcourse release`` and ``segcourse grade``.

Grading runs one ``nbgrader autograde`` process per (student, assignment), ``jobs`` at a time,
all writing to the one gradebook. A submission whose autograding fails is retried: when a cell
killed the kernel, that cell is skipped on the retry (see ``SafeExecute``); when the gradebook
was busy, after a pause. Submitted files are only ever read.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .grading import MANIFEST, load_manifest
from .references import check_ids_in_notebook, course_dir, find_notebooks

__all__ = ["release", "grade", "GradeRow", "write_csv", "format_table"]

MAX_CRASH_RETRIES = 5
MAX_BUSY_RETRIES = 8


def _with_env_bin(env: dict) -> dict:
    """nbgrader runs the `alembic` command of its environment (also when this process opens a
    new gradebook): put that environment's bin first, so an un-activated virtualenv works."""
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _nbgrader(*args: str, env: dict | None = None, check: bool = True):
    """Run an nbgrader command in the course folder; returns the CompletedProcess."""
    env = _with_env_bin(dict(env or os.environ))
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args], cwd=course_dir(), env=env,
        capture_output=True, text=True,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


# --------------------------------------------------------------------------------------------
# Release
# --------------------------------------------------------------------------------------------


def release(assignments: list[str] | None = None) -> list[Path]:
    """Generate student versions into ``autograder/release/`` (solutions and hidden tests
    removed by nbgrader), plus the references of their *visible* checks, so that students can
    run the visible tests. Returns the released notebooks."""
    released = []
    for source in tqdm(find_notebooks(assignments), desc="release", unit="notebook"):
        name = source.stem
        _nbgrader("generate_assignment", name, "--force")
        notebook = course_dir() / "release" / name / f"{name}.ipynb"
        _copy_visible_references(notebook)
        released.append(notebook)
    return released


def _copy_visible_references(notebook: Path) -> None:
    visible = set(check_ids_in_notebook(notebook))
    target = notebook.parent / "references"
    shutil.rmtree(target, ignore_errors=True)
    if not visible:
        return
    source = course_dir() / "references"
    entries = [e for e in load_manifest(source)["references"] if e["check"] in visible]
    for entry in entries:
        (target / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / entry["file"], target / entry["file"])
    (target / MANIFEST).write_text(json.dumps({"references": entries}, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# Grade
# --------------------------------------------------------------------------------------------


@dataclass
class GradeRow:
    student: str
    assignment: str
    score: float
    max_score: float
    status: str  # "ok", or what went wrong


def _submissions(submitted: Path) -> list[tuple[str, str]]:
    pairs = []
    for student in sorted(p for p in submitted.iterdir() if p.is_dir()):
        for assignment in sorted(p for p in student.iterdir() if p.is_dir()):
            pairs.append((student.name, assignment.name))
    return pairs


def _ensure_in_gradebook(assignments: set[str]) -> None:
    """nbgrader grades against the source notebooks recorded by generate_assignment."""
    from nbgrader.api import Gradebook, MissingEntry

    known = {path.stem for path in find_notebooks()}
    for name in sorted(assignments & known):
        with Gradebook(_db_url()) as gradebook:
            try:
                gradebook.find_assignment(name)
                continue
            except MissingEntry:
                pass
        _nbgrader("generate_assignment", name, "--force")


def _db_url() -> str:
    return os.environ.get("SEGCOURSE_GRADEBOOK_URL", f"sqlite:///{course_dir() / 'gradebook.db'}")


def _autograde_one(student: str, assignment: str, submitted: Path, timeout: int | None) -> str:
    """Autograde one submission with retries; returns a status string."""
    skip: list[int] = []
    busy_tries = 0
    with tempfile.TemporaryDirectory(prefix="segcourse-grade-") as scratch:
        progress = Path(scratch) / "progress"
        while True:
            env = dict(os.environ, SEGCOURSE_SUBMITTED_DIR=str(submitted),
                       SEGCOURSE_PROGRESS_FILE=str(progress),
                       SEGCOURSE_SKIP_CELLS=json.dumps(skip), PYTHONUNBUFFERED="1")
            if timeout:
                env["SEGCOURSE_CELL_TIMEOUT"] = str(timeout)
            progress.unlink(missing_ok=True)
            done = _nbgrader("autograde", assignment, "--student", student, "--force",
                             env=env, check=False)
            if done.returncode == 0:
                return "ok" if not skip else f"ok (cells {skip} crashed the kernel; skipped)"
            log = done.stdout + done.stderr
            if "database is locked" in log and busy_tries < MAX_BUSY_RETRIES:
                busy_tries += 1
                time.sleep(0.5 * busy_tries)
                continue
            crashed = _crashed_cell(log, progress)
            if crashed is not None and crashed not in skip and len(skip) < MAX_CRASH_RETRIES:
                skip.append(crashed)
                continue
            return _failure_status(log)


def _crashed_cell(log: str, progress: Path) -> int | None:
    kernel_died = any(word in log for word in ("DeadKernelError", "Kernel died",
                                               "UnresponsiveKernel", "kernel became unresponsive"))
    if kernel_died and progress.exists():
        return int(progress.read_text())
    return None


def _failure_status(log: str) -> str:
    if "NotJSONError" in log or "Notebook does not appear to be JSON" in log or "Unreadable" in log:
        return "error: the notebook file is not a valid notebook"
    lines = [line.strip() for line in log.splitlines() if "Error" in line or "error" in line]
    return "error: " + (lines[-1][:160] if lines else "autograding failed (see nbgrader's log)")


def _scores(pairs: list[tuple[str, str]], statuses: dict) -> list[GradeRow]:
    from nbgrader.api import Gradebook, MissingEntry

    rows = []
    with Gradebook(_db_url()) as gradebook:
        for student, assignment in pairs:
            status = statuses[(student, assignment)]
            try:
                max_score = float(gradebook.find_assignment(assignment).max_score)
            except MissingEntry:
                rows.append(GradeRow(student, assignment, 0.0, 0.0,
                                     "error: unknown assignment (not in notebooks/)"))
                continue
            try:
                submission = gradebook.find_submission(assignment, student)
                score = float(submission.score) if status.startswith("ok") else 0.0
            except MissingEntry:
                score = 0.0
            rows.append(GradeRow(student, assignment, score, max_score, status))
    return rows


def grade(submitted: Path | str, jobs: int = 1, timeout: int | None = None) -> list[GradeRow]:
    """Autograde every ``submitted/STUDENT/ASSIGNMENT/*.ipynb``; ``jobs`` in parallel."""
    submitted = Path(submitted).resolve()
    if not submitted.is_dir():
        raise SystemExit(f"{submitted} is not a folder of STUDENT/ASSIGNMENT/*.ipynb submissions")
    pairs = _submissions(submitted)
    if not pairs:
        raise SystemExit(f"no submissions found under {submitted} "
                         "(expected STUDENT/ASSIGNMENT/NOTEBOOK.ipynb)")
    _with_env_bin(os.environ)  # the gradebook is opened in this process too
    _ensure_in_gradebook({assignment for _, assignment in pairs})
    statuses = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pair: pool.submit(_autograde_one, *pair, submitted, timeout) for pair in pairs}
        for pair, future in tqdm(futures.items(), desc="autograde", unit="submission"):
            try:
                statuses[pair] = future.result()
            except Exception as error:  # never lose the batch to one submission
                statuses[pair] = f"error: {type(error).__name__}: {error}"
    return _scores(pairs, statuses)


def write_csv(rows: list[GradeRow], path: Path | str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "assignment", "score", "max_score", "status"])
        for row in rows:
            writer.writerow([row.student, row.assignment, f"{row.score:g}",
                             f"{row.max_score:g}", row.status])


def format_table(rows: list[GradeRow]) -> str:
    header = f"{'student':<16} {'assignment':<22} {'score':>7} {'max':>5}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.student:<16} {row.assignment:<22} {row.score:>7g} "
                     f"{row.max_score:>5g}  {row.status}")
    return "\n".join(lines)
