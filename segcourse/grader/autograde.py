"""Release and autograde with nbgrader: the engine of ``segcourse release`` and ``segcourse grade``.

Grading runs one ``nbgrader autograde`` process per (student, assignment), ``jobs`` at a time,
all writing to the one gradebook. Each runs its kernel in its own sandbox (``sandbox.py``,
``SafeExecute``) on a staged copy of the submission, so submitted files are only ever read. The
driver owns every sandbox's scratch and removes it when the submission is done, also when
grading is interrupted; a submission that runs past its wall-clock cap is stopped. Afterwards
the gradebook is audited: a score above the maximum, or a manual score or extra credit in the
gradebook, is flagged in the table and the CSV instead of "ok".
"""

from __future__ import annotations

import csv
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..verify import MANIFEST, load_manifest
from .course import check_ids_in_notebook, course_dir, find_notebooks
from .sandbox import Limits, Sandbox, claim_slot, orphaned_processes, sandbox_problem

__all__ = ["release", "grade", "GradeRow", "write_csv", "format_table", "copy_visible_references"]

MAX_BUSY_RETRIES = 8
MAX_SUBMITTED_FILE = 100 * 2**20  # a file of a submission larger than this is not graded
GRADER_MARGIN = 180  # seconds the nbgrader process may take beyond the notebook's cap


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


def _ensure_in_gradebook(assignments: set[str]) -> None:
    """nbgrader grades against the source notebooks recorded by generate_assignment."""
    from nbgrader.api import Gradebook, MissingEntry

    known = {path.stem for path in find_notebooks()}
    for name in sorted(assignments & known):
        with Gradebook(_db_url()) as gradebook:
            try:
                gradebook.find_assignment(name)
                if (course_dir() / "release" / name).is_dir():
                    continue
            except MissingEntry:
                pass
        _nbgrader("generate_assignment", name, "--force")


def _db_url() -> str:
    return os.environ.get("SEGCOURSE_GRADEBOOK_URL", f"sqlite:///{course_dir() / 'gradebook.db'}")


def _release_files(assignment: str) -> list[Path]:
    """What the release ships beside the notebook (data files, say), without its references:
    the kernel needs no reference while autograding."""
    folder = course_dir() / "release" / assignment
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name != "references" and p.suffix != ".ipynb" and not p.is_symlink())


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


class _Slots:
    """``jobs`` sandbox slots claimed on this machine for the batch: each running submission
    has its own uid and scratch, and no other grader uses them meanwhile."""

    def __init__(self, jobs: int, stack: ExitStack):
        self.claimed = [stack.enter_context(claim_slot()) for _ in range(jobs)]
        self._free: queue.Queue[int] = queue.Queue()
        for slot in self.claimed:
            self._free.put(slot)

    def take(self) -> int:
        return self._free.get()

    def give(self, slot: int) -> None:
        self._free.put(slot)


class _Batch:
    """Running nbgrader processes, so that an interrupted batch leaves nothing behind."""

    def __init__(self):
        self.processes: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def run(self, command: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
        with self.lock:
            if self.stopping:
                return None, "grading was interrupted"
            process = subprocess.Popen(command, cwd=course_dir(), env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            self.processes.add(process)
        try:
            output, _ = process.communicate(timeout=timeout)
            return process.returncode, output
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            return None, output + f"\n(stopped: grading took more than {timeout:.0f} s)"
        finally:
            with self.lock:
                self.processes.discard(process)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.processes:
                _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _autograde_one(student: str, assignment: str, stage: Path, slots: _Slots, batch: _Batch,
                   options: dict) -> str:
    """Autograde one submission in its sandbox; returns a status string."""
    slot = slots.take()
    scratch = Path(tempfile.mkdtemp(prefix=f"{student}-{assignment}-", dir=options["scratch"]))
    try:
        env = _with_env_bin(dict(os.environ))
        # the kernel's working folder: the files the release ships, then the student's own
        # (their notebook included); never the release's references
        files = _release_files(assignment) + sorted((stage / student / assignment).iterdir())
        env.update(SEGCOURSE_SUBMITTED_DIR=str(stage), SEGCOURSE_SCRATCH=str(scratch),
                   SEGCOURSE_SANDBOX="bwrap" if options["sandbox"] else "none",
                   SEGCOURSE_SANDBOX_SLOT=str(slot),
                   SEGCOURSE_LIMITS=json.dumps(asdict(options["limits"])),
                   SEGCOURSE_RELEASE_FILES=json.dumps([str(p) for p in files]),
                   SEGCOURSE_THREADS=str(options["threads"]),
                   PYTHONUNBUFFERED="1")
        if options["timeout"]:
            env["SEGCOURSE_CELL_TIMEOUT"] = str(options["timeout"])
        command = [sys.executable, "-m", "nbgrader", "autograde", assignment,
                   "--student", student, "--force"]
        cap = (options["limits"].wall or 10**6) + GRADER_MARGIN
        for busy_tries in range(MAX_BUSY_RETRIES + 1):
            code, log = batch.run(command, env, cap)
            if code == 0:
                return _status_from_report(scratch / "report.json")
            if "database is locked" in log and busy_tries < MAX_BUSY_RETRIES:
                time.sleep(0.5 * (busy_tries + 1))
                continue
            _keep_log(student, assignment, log)
            return _failure_status(log)
        return "error: the gradebook stayed busy"
    finally:
        Sandbox(scratch, slot=slot).close()  # its attempts' sandboxes too
        slots.give(slot)


def _status_from_report(path: Path) -> str:
    """"ok", plus what SafeExecute had to do (crashed cells skipped, a kernel that stopped)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return "ok"
    notes = []
    if report.get("crashed"):
        notes.append(f"cells {report['crashed']} crashed the kernel; skipped")
    if report.get("stopped") and "crashed" not in report["stopped"]:
        notes.append(f"stopped at {report['stopped']}; later cells not run")
    return "ok" if not notes else f"ok ({'; '.join(notes)})"


def _keep_log(student: str, assignment: str, log: str) -> None:
    """nbgrader's log of a failed submission, for the instructor: autograded/STUDENT/ASSIGNMENT.log."""
    folder = course_dir() / "autograded" / student
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{assignment}.log").write_text(log)


def _failure_status(log: str) -> str:
    if "NotJSONError" in log or "Notebook does not appear to be JSON" in log or "Unreadable" in log:
        return "error: the notebook file is not a valid notebook"
    if "(stopped: grading took more than" in log:
        return "error: " + log.rsplit("(stopped: ", 1)[1].rstrip(")\n")
    generic = ("Please see the", "There was an error processing", "Removing failed")
    lines = [line.strip() for line in log.splitlines()
             if ("Error" in line or "error" in line) and not any(g in line for g in generic)]
    return "error: " + (lines[-1][:160] if lines else "autograding failed") + \
        " (nbgrader's log: autograded/STUDENT/ASSIGNMENT.log)"


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


def _scores(pairs, statuses: dict, notes: dict, sandboxed: bool) -> list[GradeRow]:
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


def grade(submitted: Path | str, jobs: int = 1, timeout: int | None = None,
          sandbox: bool = True, limits: Limits | None = None) -> list[GradeRow]:
    """Autograde every ``submitted/STUDENT/ASSIGNMENT/*.ipynb``; ``jobs`` in parallel.

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
    with _only_grader(scratch_root / ".lock"):
        return _grade_batch(submitted, pairs, jobs, timeout, sandbox, limits, scratch_root)


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


def _grade_batch(submitted, pairs, jobs, timeout, sandbox, limits, scratch_root) -> list[GradeRow]:
    _clean_stale(scratch_root)
    stage = scratch_root / "submitted"
    shutil.rmtree(stage, ignore_errors=True)
    notes = {pair: _stage(submitted, stage, *pair) for pair in pairs}
    _with_env_bin(os.environ)  # the gradebook is opened in this process too
    _ensure_in_gradebook({assignment for _, assignment in pairs})
    # each kernel gets its share of the cores (or what OMP_NUM_THREADS says)
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // max(1, jobs)))
    options = dict(scratch=scratch_root, sandbox=sandbox, limits=limits, timeout=timeout,
                   threads=threads)
    _kill_orphans()
    stack = ExitStack()
    slots, batch = _Slots(max(1, jobs), stack), _Batch()
    statuses = {}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pair: pool.submit(_autograde_one, *pair, stage, slots, batch, options)
                       for pair in pairs}
            try:
                for pair, future in tqdm(futures.items(), desc="autograde", unit="submission"):
                    try:
                        statuses[pair] = future.result()
                    except Exception as error:  # never lose the batch to one submission
                        statuses[pair] = f"error: {type(error).__name__}: {error}"
            except BaseException:
                batch.stop()
                for future in futures.values():
                    future.cancel()
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for slot in slots.claimed:
            Sandbox(scratch_root / "none", slot=slot).kill_leftovers()
        stack.close()
        shutil.rmtree(stage, ignore_errors=True)
        _clean_stale(scratch_root)
    return _scores(pairs, statuses, notes, sandbox)


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
