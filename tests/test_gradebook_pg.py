"""nbgrader's gradebook on a real PostgreSQL server, written by many processes at once.

The fixture starts Debian's PostgreSQL (package ``postgresql``, which ``make system`` installs; the driver is psycopg 3)
in a temporary folder: ``initdb`` and ``pg_ctl`` as an unprivileged user (the server refuses to
run as root), listening on 127.0.0.1 at a free port, trust authentication, fsync off. The tests
are skipped, saying why, only when the package is not installed and cannot be.

- 10 processes write the grades of 60 submissions through nbgrader's own API at once, creating
  the same students concurrently (the race two workers grading one student's two notebooks
  meet): every grade is there, once, with its value; conflicts were retried.
- 10 processes record the same ledger rows at once: one row each, none lost.
- A real ``segcourse grade --db postgresql://...`` batch on a Dask LocalCluster of two workers.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_course as tc  # noqa: E402

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: "
                              "pip install 'psycopg[binary]' (it is in the dev extra)")

WRITERS = int(os.environ.get("SEGCOURSE_PG_WRITERS", "10"))


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def _install_postgresql() -> str | None:
    """Install Debian's postgresql when we can (root with apt); returns why not, or None."""
    if _pg_bin():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed (sudo apt-get install postgresql, or make system)"
    done = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                          "apt-get install -y -qq postgresql", shell=True,
                          capture_output=True, text=True)
    if done.returncode != 0 or not _pg_bin():
        return f"apt-get install postgresql failed: {done.stderr.strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A running PostgreSQL server; yields a function making a new, empty database's URL."""
    why = _install_postgresql()
    if why:
        pytest.skip(why)
    patch = pytest.MonkeyPatch()  # nbgrader runs the `alembic` command of this environment
    patch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    bindir = _pg_bin()
    folder = Path(tempfile.mkdtemp(prefix="segcourse-pg-"))
    data, port = folder / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses root: run it as the package's own user
        user = "postgres" if _user_exists("postgres") else "nobody"
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        as_user = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                   "--init-groups", "--"] if user != "nobody" else [
                   "setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                   "--clear-groups", "--"]
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                              "-U", "grader", "-E", "UTF8"],
                   check=True, capture_output=True, env=env, cwd=folder)
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c max_connections=200 -c synchronous_commit=off")
    started = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
                                        "-l", str(folder / "log"), "-w", "-t", "120", "start"],
                             capture_output=True, text=True, env=env, cwd=folder)
    assert started.returncode == 0, started.stdout + started.stderr + _read(folder / "log")
    counter = iter(range(1000))

    def new_database() -> str:
        name = f"gradebook{next(counter)}"
        with psycopg.connect(host="127.0.0.1", port=port, user="grader", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql://grader@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        patch.undo()
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "-w", "stop"], capture_output=True, env=env, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text()[-2000:]
    except OSError:
        return ""


# ------------------------------------------------------------------------------ many writers


def _score(student: str, assignment: str) -> float:
    return float((sum(map(ord, student + assignment)) % 7) + 1)


def _writer(url: str, tasks: list[tuple[str, str]], start, queue) -> None:
    """One grader process: for each (student, assignment), what nbgrader autograde writes
    (create the student, the submission, its auto score), retried on conflicts."""
    from nbgrader.api import Gradebook

    from segcourse.grader.gradebook import retrying

    retries = [0]
    start.wait(600)  # all at once
    for student, assignment in tasks:
        def once(student=student, assignment=assignment):
            with Gradebook(url, "segcourse") as gradebook:
                try:
                    gradebook.update_or_create_student(student)
                    submission = gradebook.update_or_create_submission(assignment, student)
                    for notebook in submission.notebooks:
                        for grade in notebook.grades:
                            grade.auto_score = _score(student, assignment)
                    gradebook.db.commit()
                except Exception:
                    gradebook.db.rollback()
                    raise

        retrying(once, attempts=20, on_retry=lambda: retries.__setitem__(0, retries[0] + 1))
    queue.put(retries[0])


def _ledger_writer(url: str, start, queue) -> None:
    from segcourse.grader.gradebook import Ledger

    start.wait(600)
    with Ledger(url) as ledger:
        for index in range(20):
            ledger.record(f"s{index}", "hw", f"key{index}", "ok")
    queue.put(0)


def _run_processes(target, args_of, count: int) -> list[int]:
    import nbgrader.api  # noqa: F401  (imported once, before forking: the machine may be busy)

    from segcourse.grader.gradebook import Ledger  # noqa: F401

    context = multiprocessing.get_context("fork")  # no connection is open in this process
    queue, start = context.Queue(), context.Barrier(count)
    processes = [context.Process(target=target, args=(*args_of(i), start, queue))
                 for i in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(900)
        assert process.exitcode == 0, f"a writer failed (exit code {process.exitcode})"
    return [queue.get(timeout=5) for _ in processes]


@pytest.mark.slow
def test_many_processes_write_grades_at_once_and_none_is_lost_or_doubled(postgres):
    from nbgrader.api import Gradebook

    url = postgres()
    assignments = [f"hw{i}" for i in range(WRITERS)]
    students = [f"student{i:02d}" for i in range(6)]
    with Gradebook(url, "segcourse") as gradebook:  # what generate_assignment records
        for assignment in assignments:
            gradebook.add_assignment(assignment)
            gradebook.add_notebook("nb", assignment)
            for cell in ("q1", "q2"):
                gradebook.add_grade_cell(cell, "nb", assignment, max_score=10, cell_type="code")
    # each (student, assignment) is graded by exactly one process: process i grades hw<i> of
    # every student, in the same order, so all of them race to create each student
    tasks = [(s, a) for a in assignments for s in students]
    retries = _run_processes(
        _writer, lambda i: (url, [(s, assignments[i]) for s in students]), WRITERS)

    found = tc.submissions_in_gradebook({}, url)
    assert found == {pair: 1 for pair in tasks}, "a grade lost or written twice"
    with Gradebook(url, "segcourse") as gradebook:
        assert sorted(s.id for s in gradebook.students) == students
        for student, assignment in tasks:
            submission = gradebook.find_submission(assignment, student)
            assert float(submission.score) == 2 * _score(student, assignment), (student, assignment)
    print(f"{sum(retries)} conflicts retried by {WRITERS} writers")


@pytest.mark.slow
def test_many_processes_record_the_ledger_at_once(postgres):
    from segcourse.grader.gradebook import Ledger

    url = postgres()
    with Ledger(url) as ledger:
        ledger.create()
    _run_processes(_ledger_writer, lambda i: (url,), WRITERS)
    with Ledger(url) as ledger:
        found = ledger.lookup()
    assert sorted(found) == sorted((f"s{i}", "hw") for i in range(20))
    assert all(found[(f"s{i}", "hw")][:2] == (f"key{i}", "ok") for i in range(20))


# ------------------------------------------------------------------------------ a real batch


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="grades in the sandbox as root (CI)")
def test_segcourse_grade_on_postgresql(postgres, tmp_path):
    url = postgres()
    env = tc.make_course(tmp_path)
    students = {"ann": ("solved", 0), "ben": ("wrong", 0), "cid": ("blank", 0),
                "dee": ("solved", 0)}
    inbox = tmp_path / "inbox"
    tc.write_submissions(inbox, tmp_path, students)
    done = tc.grade(env, inbox, tmp_path / "grades.csv", "--engine", "dask", "--jobs", "2",
                    "--db", url)
    assert "4 graded, 0 unchanged" in done.stdout and "LocalCluster with 2 worker" in done.stdout
    rows = tc.rows(tmp_path / "grades.csv")
    assert {s: (float(r["score"]), r["status"]) for s, r in rows.items()} == {
        s: (tc.expected(kind), "ok") for s, (kind, _) in students.items()}
    assert tc.submissions_in_gradebook(env, url) == {(s, tc.NAME): 1 for s in students}
    assert tc.submissions_in_gradebook(env) == {}  # no grade went to the release's SQLite file
    assert sorted(tc.ledger(env, url)) == sorted(f"{s}/{tc.NAME}" for s in students)
    # the environment variable does the same as --db, and nothing is graded twice
    again = tc.grade(dict(env, SEGCOURSE_GRADEBOOK_URL=url), inbox, tmp_path / "again.csv")
    assert "0 graded, 4 unchanged" in again.stdout
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "grades.csv").read_bytes()
