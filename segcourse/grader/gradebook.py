"""The gradebook: nbgrader's database (SQLite by default, PostgreSQL for many graders), retries on
write conflicts, and the record of what has been graded (idempotency).

- ``db_url(db)``: ``--db URL``, else ``$SEGCOURSE_GRADEBOOK_URL``, else the SQLite file
  ``autograder/gradebook.db``. SQLite admits one writer at a time ("database is locked"); a server
  database (``postgresql://user@host/db``, with psycopg 3) takes many graders at once.
- ``retrying(fn)``: runs a gradebook transaction again, with exponential backoff and jitter, when
  it failed for a reason that another writer caused (a unique key inserted meanwhile, a
  serialization failure or deadlock on PostgreSQL, SQLite's lock); any other error is raised.
- ``prepare(url, assignments, students)``: opens the gradebook once in the driver before any
  worker starts (nbgrader creates its tables and the course on first use; many processes doing
  it at once would collide) and creates every student of the batch, so that two workers grading
  one student's two notebooks never race to create that student.
- ``Ledger``: one row per graded submission in the table ``segcourse_graded`` of the same
  database: the sha256 *key* of everything the grade depends on (the submitted files, the
  release, the references of that notebook, the grader's settings) and the status. An unchanged
  submission whose key is recorded and whose grade is in the gradebook is not graded again
  (``--force`` does). The record lives beside the grades, so a new gradebook regrades everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from .course import course_dir

__all__ = ["db_url", "is_sqlite", "retrying", "is_transient", "prepare", "Ledger",
           "submission_key", "TRANSIENT_MARKERS", "redact"]

T = TypeVar("T")

# What another writer causes (and a retry cures), as SQLAlchemy / the drivers word it.
TRANSIENT_MARKERS = (
    "database is locked",                 # SQLite: another writer holds the lock
    "database table is locked",
    "IntegrityError",                     # a row with the same key was inserted meanwhile
    "UniqueViolation",
    "duplicate key value",
    "UNIQUE constraint failed",
    "could not serialize access",         # PostgreSQL serialization failure (40001)
    "SerializationFailure",
    "deadlock detected",                  # PostgreSQL (40P01)
    "DeadlockDetected",
    "InvalidEntry",                       # nbgrader's wrapper of an IntegrityError
    "server closed the connection unexpectedly",
    "too many clients already",
    "the database system is starting up",
)


def db_url(db: str | None = None) -> str:
    return db or os.environ.get("SEGCOURSE_GRADEBOOK_URL") or \
        f"sqlite:///{course_dir() / 'gradebook.db'}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def is_transient(error: BaseException | str) -> bool:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error!r} {error}"
    if not isinstance(error, str):
        cause = error.__cause__ or error.__context__
        if cause is not None:
            text += f" {type(cause).__name__}: {cause}"
    return any(marker in text for marker in TRANSIENT_MARKERS)


def backoff(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    """Seconds to wait before retry ``attempt`` (0, 1, ...): exponential, capped, with jitter
    so that writers that collided do not collide again."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2**attempt)


def retrying(fn: Callable[[], T], attempts: int = 10, on_retry: Callable[[], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, run again after a transient gradebook conflict (at most ``attempts`` times)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as error:
            if attempt == attempts - 1 or not is_transient(error):
                raise
            if on_retry is not None:
                on_retry()
            sleep(backoff(attempt))
    raise AssertionError("unreachable")


def _check_driver(url: str) -> None:
    """A clear message when the PostgreSQL driver SQLAlchemy picks for ``url`` is missing."""
    if not url.startswith("postgresql"):
        return
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as error:
        raise SystemExit(
            f"segcourse grade: the gradebook is PostgreSQL but its driver is missing ({error}): "
            "pip install 'psycopg[binary]' (or, in the course's folder, "
            "pip install -e '.[postgres]')") from None


def prepare(url: str, course_id: str, students: Iterable[str]) -> None:
    """Create nbgrader's tables, the course and every student of the batch, in this process,
    before workers write (see the module's docstring)."""
    from nbgrader.api import Gradebook

    _check_driver(url)

    def once():
        with Gradebook(url, course_id) as gradebook:
            known = {student.id for student in gradebook.students}
            for student in sorted(set(students) - known):
                gradebook.update_or_create_student(student)

    retrying(once)
    Ledger(url).create()


# --------------------------------------------------------------------------------------------
# What a grade depends on
# --------------------------------------------------------------------------------------------


def _hash_tree(digest, folder: Path, label: str) -> None:
    if not folder.exists():
        digest.update(f"{label}:absent\n".encode())
        return
    paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in paths:
        name = path.name if folder.is_file() else path.relative_to(folder).as_posix()
        digest.update(f"{label}:{name}:{path.stat().st_size}\n".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)


def submission_key(staged: Path, assignment: str, settings: dict,
                   references: Path | None = None) -> str:
    """sha256 of everything the grade of one submission depends on: the staged submitted files,
    the instructor notebook and its release (notebook and shipped files), the references of that
    notebook (their manifest entries, which hold each file's sha256), the course's nbgrader
    configuration and the grader's settings (limits, timeout, sandbox)."""
    from .course import find_notebooks, references_root

    digest = hashlib.sha256()
    _hash_tree(digest, staged, "submitted")
    source = next((p for p in find_notebooks() if p.stem == assignment), None)
    if source is not None:
        _hash_tree(digest, source.parent, "source")
    _hash_tree(digest, course_dir() / "release" / assignment, "release")
    manifest = (references or references_root()) / "manifest.json"
    try:
        entries = json.loads(manifest.read_text())["references"]
    except (OSError, ValueError, KeyError):
        entries = []
    mine = [e for e in entries if str(e.get("file", "")).startswith(f"{assignment}/")]
    digest.update(json.dumps(mine, sort_keys=True).encode())
    _hash_tree(digest, course_dir() / "nbgrader_config.py", "config")
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The ledger
# --------------------------------------------------------------------------------------------


class Ledger:
    """``segcourse_graded``: (student, assignment) -> key, status, graded_at."""

    def __init__(self, url: str):
        from sqlalchemy import Column, Float, MetaData, String, Table, Text, create_engine

        self.url = url
        self.metadata = MetaData()
        self.table = Table(
            "segcourse_graded", self.metadata,
            Column("student", String(128), primary_key=True),
            Column("assignment", String(128), primary_key=True),
            Column("key", String(64), nullable=False),
            Column("status", Text, nullable=False),
            Column("graded_at", Float, nullable=False),
        )
        self.engine = create_engine(url, future=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create(self) -> None:
        retrying(lambda: self.metadata.create_all(self.engine))

    def lookup(self) -> dict[tuple[str, str], tuple[str, str, float]]:
        """Every record: (student, assignment) -> (key, status, graded_at)."""
        from sqlalchemy import inspect, select

        def once():
            if not inspect(self.engine).has_table(self.table.name):
                return {}
            with self.engine.connect() as connection:
                rows = connection.execute(select(self.table)).all()
            return {(r.student, r.assignment): (r.key, r.status, r.graded_at) for r in rows}

        return retrying(once)

    def forget(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop the records of submissions about to be graded again: an interrupted grading
        must not leave a record that claims a half-written grade."""
        pairs = list(pairs)
        if not pairs:
            return
        table = self.table

        def once():
            with self.engine.begin() as connection:
                for student, assignment in pairs:
                    connection.execute(table.delete().where(
                        (table.c.student == student) & (table.c.assignment == assignment)))

        retrying(once)

    def record(self, student: str, assignment: str, key: str, status: str) -> None:
        table = self.table

        def once():
            with self.engine.begin() as connection:
                connection.execute(table.delete().where(
                    (table.c.student == student) & (table.c.assignment == assignment)))
                connection.execute(table.insert().values(
                    student=student, assignment=assignment, key=key, status=status,
                    graded_at=time.time()))

        retrying(once)
