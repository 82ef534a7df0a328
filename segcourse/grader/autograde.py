"""Release and autograde with nbgrader: the engine of ``segcourse release`` and ``segcourse grade``.

Grading runs one ``nbgrader autograde`` process per (student, assignment), ``jobs`` at a time,
on this machine (default) or on a Dask cluster (``engine.py``), all writing to one gradebook
(``gradebook.py``: SQLite, or PostgreSQL for many writers, conflicts retried). Each runs its
kernel in its own sandbox (``sandbox.py``, ``SafeExecute``) on a staged copy of the submission,
so submitted files are only ever read. Whoever runs a submission owns its sandbox's scratch and
removes it when the submission is done, also when grading is interrupted; a submission that runs
past its wall-clock cap is stopped. A submission already graded, unchanged (same key: files,
release, references, settings), is not graded again unless forced; an interrupted batch run
again grades what is left. Afterwards the gradebook is audited: a score above the maximum, or a
manual score or extra credit in the gradebook, is flagged in the table and the CSV instead of
"ok".
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..verify import MANIFEST, load_manifest
from . import engine, gradebook
from .course import check_ids_in_notebook, course_dir, find_notebooks, references_root
from .gradebook import db_url
from .sandbox import Limits, Sandbox, orphaned_processes, sandbox_problem

__all__ = ["release", "grade", "GradeRow", "write_csv", "format_table", "copy_visible_references"]

MAX_SUBMITTED_FILE = 100 * 2**20  # a file of a submission larger than this is not graded


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
        copy_visible_references(notebook)
        released.append(notebook)
    return released


def copy_visible_references(notebook: Path) -> None:
    """Put the references of the checks visible in ``notebook`` into ``references/`` beside it."""
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
    status: str  # "ok", or what went wrong / what needs a look


def _submissions(submitted: Path) -> list[tuple[str, str]]:
    pairs = []
    for student in sorted(p for p in submitted.iterdir() if p.is_dir() and not p.is_symlink()):
        for assignment in sorted(p for p in student.iterdir() if p.is_dir() and not p.is_symlink()):
            pairs.append((student.name, assignment.name))
    return pairs


def _ensure_in_gradebook(assignments: set[str], url: str) -> None:
    """nbgrader grades against the source notebooks recorded by generate_assignment."""
    from nbgrader.api import Gradebook, MissingEntry

    known = {path.stem for path in find_notebooks()}
    for name in sorted(assignments & known):
        with Gradebook(url, COURSE_ID) as book:
            try:
                book.find_assignment(name)
                if (course_dir() / "release" / name).is_dir():
                    continue
            except MissingEntry:
                pass
        _nbgrader("generate_assignment", name, "--force",
                  env=dict(os.environ, SEGCOURSE_GRADEBOOK_URL=url))


def _stage(submitted: Path, stage: Path, student: str, assignment: str) -> str:
    """Copy one submission into the grader's staging folder (only regular files, no links, no
    student timestamp). Returns a note for the status, or ""."""
    source, target = submitted / student / assignment, stage / student / assignment
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    note = ""
    for path in source.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.name == "timestamp.txt" and path.parent == source:
            note = "student's timestamp.txt ignored"
            continue
        if path.stat().st_size > MAX_SUBMITTED_FILE:
            note = f"{path.name} larger than {MAX_SUBMITTED_FILE // 2**20} MiB left out"
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    return note


def _audit(gradebook, student: str, assignment: str, status: str) -> tuple[float, list[str]]:
    """The submission's score and what in the gradebook needs a person's look."""
    from nbgrader.api import MissingEntry

    try:
        submission = gradebook.find_submission(assignment, student)
    except MissingEntry:
        return 0.0, []
    flags = []
    manual = [g for nb in submission.notebooks for g in nb.grades
              if g.manual_score is not None or g.extra_credit]
    if manual:
        extra = sum(float(g.extra_credit or 0) for g in manual)
        flags.append(f"REVIEW: manual score or extra credit on {len(manual)} cell(s) "
                     f"(extra {extra:g}) not given by this run")
    score = float(submission.score)
    if score > float(submission.max_score) + 1e-9:
        flags.append(f"REVIEW: score {score:g} above the maximum {float(submission.max_score):g}")
    return (score if status.startswith("ok") else 0.0), flags


def _scores(pairs, statuses: dict, notes: dict, sandboxed: bool, url: str) -> list[GradeRow]:
    from nbgrader.api import Gradebook, MissingEntry

    rows = []
    with Gradebook(url, COURSE_ID) as gradebook:
        for student, assignment in pairs:
            status = statuses[(student, assignment)]
            try:
                max_score = float(gradebook.find_assignment(assignment).max_score)
            except MissingEntry:
                rows.append(GradeRow(student, assignment, 0.0, 0.0,
                                     "error: unknown assignment (not in notebooks/)"))
                continue
            score, flags = _audit(gradebook, student, assignment, status)
            parts = [*flags, status] if flags else [status]
            if notes.get((student, assignment)):
                parts.append(notes[(student, assignment)])
            if not sandboxed:
                parts.append("unsandboxed")
            rows.append(GradeRow(student, assignment, score, max_score, "; ".join(parts)))
    return rows


def _clean_stale(scratch_root: Path) -> None:
    """Scratch left by a grader that was killed outright: unmount and remove it."""
    for stale in sorted(scratch_root.glob("*")) if scratch_root.exists() else []:
        if stale.name in ("submitted", ".lock"):
            continue
        Sandbox(stale).close()


COURSE_ID = "segcourse"  # CourseDirectory.course_id in autograder/nbgrader_config.py


def grade(submitted: Path | str, jobs: int = 1, timeout: int | None = None,
          sandbox: bool = True, limits: Limits | None = None, *, engine: str = "local",
          scheduler: str | None = None, db: str | None = None, force: bool = False,
          cluster_options: dict | None = None, summary: dict | None = None) -> list[GradeRow]:
    """Autograde every ``submitted/STUDENT/ASSIGNMENT/*.ipynb``; ``jobs`` in parallel.

    ``engine``: ``local`` (threads on this machine), ``dask`` (a Dask LocalCluster of ``jobs``
    workers), ``slurm`` or ``kubernetes`` (see ``engine.make_cluster``); ``scheduler``: the
    address of a running Dask cluster. ``db``: the gradebook's URL (default
    ``$SEGCOURSE_GRADEBOOK_URL`` or the SQLite file). A submission already graded with the same
    key (``gradebook.submission_key``) is not graded again unless ``force``. ``summary``, when
    given, receives counts (graded, unchanged, engine, workers, seconds).
    ``sandbox=False`` runs kernels with the grader's rights (every row says "unsandboxed").
    """
    submitted = Path(submitted).resolve()
    if not submitted.is_dir():
        raise SystemExit(f"{submitted} is not a folder of STUDENT/ASSIGNMENT/*.ipynb submissions")
    pairs = _submissions(submitted)
    if not pairs:
        raise SystemExit(f"no submissions found under {submitted} "
                         "(expected STUDENT/ASSIGNMENT/NOTEBOOK.ipynb)")
    if sandbox:
        problem = sandbox_problem()
        if problem:
            raise SystemExit(f"segcourse grade: {problem}")
    limits = limits or Limits()
    scratch_root = course_dir() / ".grading"
    scratch_root.mkdir(parents=True, exist_ok=True)
    options = dict(jobs=max(1, jobs), timeout=timeout, sandbox=sandbox, limits=limits,
                   engine=engine, scheduler=scheduler, url=db_url(db), force=force,
                   cluster_options=cluster_options)
    summary = summary if summary is not None else {}
    with _only_grader(scratch_root / ".lock"):
        return _grade_batch(submitted, pairs, scratch_root, options, summary)


@contextmanager
def _only_grader(path: Path):
    """One `segcourse grade` per course at a time: a second would clean the first's sandboxes."""
    import fcntl

    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("segcourse grade: another `segcourse grade` is grading this course "
                             "right now; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _graded_in_gradebook(url: str, assignments: set[str]) -> set[tuple[str, str]]:
    """(student, assignment) pairs that have a submission in the gradebook."""
    from nbgrader.api import Gradebook, MissingEntry

    found = set()
    with Gradebook(url, COURSE_ID) as gradebook:
        for assignment in sorted(assignments):
            try:
                for submission in gradebook.assignment_submissions(assignment):
                    found.add((submission.student_id, assignment))
            except MissingEntry:
                pass
    return found


def _grade_batch(submitted, pairs, scratch_root, options, summary) -> list[GradeRow]:
    start = time.monotonic()
    url, limits, sandbox = options["url"], options["limits"], options["sandbox"]
    _clean_stale(scratch_root)
    stage = scratch_root / "submitted"
    shutil.rmtree(stage, ignore_errors=True)
    notes = {pair: _stage(submitted, stage, *pair) for pair in pairs}
    _with_env_bin(os.environ)  # the gradebook is opened in this process too
    assignments = {assignment for _, assignment in pairs}
    gradebook.prepare(url, COURSE_ID, {student for student, _ in pairs})
    _ensure_in_gradebook(assignments, url)

    # what is already graded, unchanged, is not graded again (unless forced)
    settings = {"limits": asdict(limits), "timeout": options["timeout"], "sandbox": sandbox}
    keys = {pair: gradebook.submission_key(stage / pair[0] / pair[1], pair[1], settings)
            for pair in pairs}
    ledger = gradebook.Ledger(url)
    records = {} if options["force"] else ledger.lookup()
    present = _graded_in_gradebook(url, assignments) if records else set()
    statuses, todo = {}, []
    for pair in pairs:
        record = records.get(pair)
        if record and record[0] == keys[pair] and pair in present:
            statuses[pair] = record[1]
        else:
            todo.append(pair)
    ledger.forget(todo)  # a grading cut short must not leave a record claiming it was done
    summary.update(submissions=len(pairs), unchanged=len(pairs) - len(todo), graded=0)

    # each kernel gets its share of the cores (or what OMP_NUM_THREADS says); on a remote
    # cluster each worker works it out for its own machine
    jobs = options["jobs"]
    threads = None if options["scheduler"] else int(
        os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // jobs))
    batch_id = secrets.token_hex(6)
    env = {"SEGCOURSE_COURSE_DIR": str(course_dir()), "SEGCOURSE_GRADEBOOK_URL": url,
           "SEGCOURSE_REFERENCES": str(references_root().resolve())}
    specs = [dict(course=str(course_dir()), stage=str(stage), scratch=str(scratch_root),
                  env=env, student=student, assignment=assignment, batch=batch_id,
                  limits=asdict(limits), timeout=options["timeout"], sandbox=sandbox,
                  threads=threads)
             for student, assignment in todo]
    _kill_orphans()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        if specs:
            with engine.make_engine(options["engine"], jobs, options["scheduler"],
                                    options["cluster_options"]) as runner:
                runner.check(course_dir(), url, sandbox)
                summary.update(engine=runner.name, workers=runner.workers)
                for spec, result in tqdm(runner.run(specs), total=len(specs), desc="autograde",
                                         unit="submission"):
                    pair = (spec["student"], spec["assignment"])
                    statuses[pair] = result["status"]
                    if result.get("final"):
                        ledger.record(*pair, keys[pair], result["status"])
                        summary["graded"] += 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        ledger.close()
        _kill_orphans()
        shutil.rmtree(stage, ignore_errors=True)
        _clean_stale(scratch_root)
    summary["seconds"] = time.monotonic() - start
    return _scores(pairs, statuses, notes, sandbox, url)


def _kill_orphans() -> None:
    """Processes a grader killed outright left in its sandboxes (their slots are free now)."""
    if os.geteuid() == 0:
        for pid in orphaned_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")

def write_csv(rows: list[GradeRow], path: Path | str) -> None:
    """Write the grades atomically (a reader never sees half a file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "assignment", "score", "max_score", "status"])
        for row in rows:
            writer.writerow([row.student, row.assignment, f"{row.score:g}",
                             f"{row.max_score:g}", row.status])
    os.replace(temporary, path)


def format_table(rows: list[GradeRow]) -> str:
    header = f"{'student':<16} {'assignment':<22} {'score':>7} {'max':>5}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.student:<16} {row.assignment:<22} {row.score:>7g} "
                     f"{row.max_score:>5g}  {row.status}")
    return "\n".join(lines)
