"""Idempotent grading and resuming an interrupted batch (tiny course, real nbgrader, sandbox).

- A second `segcourse grade` of unchanged submissions grades nothing (same CSV, the record and
  nbgrader's autograded notebooks untouched); changing one submission regrades it alone;
  `--force` regrades all.
- A batch stopped in the middle (SIGTERM) and run again grades only what was left and ends
  with the CSV an uninterrupted batch writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segcourse.grader.gradebook import Ledger, is_transient, retrying, submission_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_course as tc  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="grades in the sandbox as root (CI)")


def _expected_csv(students: dict) -> str:
    lines = ["student,assignment,score,max_score,status"]
    for student in sorted(students):
        lines.append(f"{student},{tc.NAME},{tc.expected(students[student][0]):g},3,ok")
    return "\r\n".join(lines) + "\r\n"


def _autograded_mtimes(root: Path) -> dict[str, float]:
    folder = root / "autograder" / "autograded"
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*.ipynb")}


# ------------------------------------------------------------------------------ units


def test_the_key_changes_with_what_the_grade_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCOURSE_COURSE_DIR", str(tmp_path / "autograder"))
    monkeypatch.setenv("SEGCOURSE_REFERENCES", str(tmp_path / "autograder" / "references"))
    (tmp_path / "autograder" / "references").mkdir(parents=True)
    staged = tmp_path / "stage" / "ann" / "01_x"
    staged.mkdir(parents=True)
    (staged / "01_x.ipynb").write_text("{}")
    settings = {"limits": {"wall": 10}, "timeout": None, "sandbox": True}
    key = submission_key(staged, "01_x", settings)
    assert key == submission_key(staged, "01_x", dict(settings))
    assert key != submission_key(staged, "01_x", {**settings, "timeout": 5})
    (staged / "01_x.ipynb").write_text("{ }")
    changed = submission_key(staged, "01_x", settings)
    assert changed != key
    manifest = tmp_path / "autograder" / "references" / "manifest.json"
    manifest.write_text('{"references": [{"check": "c", "file": "02_y/c.pt", "sha256": "1"}]}')
    assert submission_key(staged, "01_x", settings) == changed  # another notebook's reference
    manifest.write_text('{"references": [{"check": "c", "file": "01_x/c.pt", "sha256": "1"}]}')
    assert submission_key(staged, "01_x", settings) != changed
    (tmp_path / "autograder" / "release" / "01_x").mkdir(parents=True)
    (tmp_path / "autograder" / "release" / "01_x" / "data.txt").write_text("1")
    assert submission_key(staged, "01_x", settings) != changed


def test_the_ledger_records_forgets_and_replaces(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'g.db'}") as ledger:
        ledger.create()
        ledger.record("ann", "01_x", "k1", "ok")
        ledger.record("ann", "01_x", "k2", "ok (cells [3] crashed the kernel; skipped)")
        ledger.record("ben", "01_x", "k3", "ok")
        found = ledger.lookup()
        assert {pair: value[:2] for pair, value in found.items()} == {
            ("ann", "01_x"): ("k2", "ok (cells [3] crashed the kernel; skipped)"),
            ("ben", "01_x"): ("k3", "ok")}
        ledger.forget([("ann", "01_x")])
        assert list(ledger.lookup()) == [("ben", "01_x")]


def test_conflicts_are_retried_and_other_errors_are_not():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "done"

    assert retrying(flaky, sleep=waits.append) == "done"
    assert len(calls) == 3 and len(waits) == 2 and waits[1] > 0

    def broken():
        raise ValueError("no such column")

    with pytest.raises(ValueError):
        retrying(broken, sleep=waits.append)
    assert is_transient("psycopg2.errors.SerializationFailure: could not serialize access")
    assert is_transient("psycopg2.errors.UniqueViolation: duplicate key value violates")
    assert is_transient("deadlock detected")
    assert not is_transient("NameError: name 'x' is not defined")


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
@needs_root
def test_unchanged_submissions_are_not_graded_again(tmp_path):
    env = tc.make_course(tmp_path)
    students = {"ann": ("solved", 0), "ben": ("wrong", 0), "cid": ("blank", 0)}
    inbox = tmp_path / "inbox"
    tc.write_submissions(inbox, tmp_path, students)
    first = tc.grade(env, inbox, tmp_path / "first.csv", "--jobs", "2")
    assert "3 graded, 0 unchanged" in first.stdout
    assert (tmp_path / "first.csv").read_bytes().decode() == _expected_csv(students)
    record, mtimes = tc.ledger(env), _autograded_mtimes(tmp_path)

    second = tc.grade(env, inbox, tmp_path / "second.csv", "--jobs", "2")
    assert "0 graded, 3 unchanged" in second.stdout
    assert (tmp_path / "second.csv").read_bytes() == (tmp_path / "first.csv").read_bytes()
    assert tc.ledger(env) == record and _autograded_mtimes(tmp_path) == mtimes

    # ben fixes his function: only ben is graded again
    tc.write_submissions(inbox, tmp_path, {"ben": ("solved", 0)})
    third = tc.grade(env, inbox, tmp_path / "third.csv", "--jobs", "2")
    assert "1 graded, 2 unchanged" in third.stdout
    after = tc.ledger(env)
    assert after[f"ann/{tc.NAME}"] == record[f"ann/{tc.NAME}"]
    assert after[f"cid/{tc.NAME}"] == record[f"cid/{tc.NAME}"]
    assert after[f"ben/{tc.NAME}"][0] != record[f"ben/{tc.NAME}"][0]
    assert tc.rows(tmp_path / "third.csv")["ben"]["score"] == "3"

    forced = tc.grade(env, inbox, tmp_path / "forced.csv", "--jobs", "2", "--force")
    assert "3 graded, 0 unchanged" in forced.stdout
    assert (tmp_path / "forced.csv").read_bytes() == (tmp_path / "third.csv").read_bytes()
    assert tc.submissions_in_gradebook(env) == {(s, tc.NAME): 1 for s in students}


@pytest.mark.slow
@needs_root
def test_an_interrupted_batch_resumed_ends_with_the_same_csv(tmp_path):
    env = tc.make_course(tmp_path)
    students = {"ann": ("solved", 0), "ben": ("wrong", 0), "cid": ("solved", 8),
                "dee": ("blank", 0), "eve": ("solved", 8)}
    inbox = tmp_path / "inbox"
    tc.write_submissions(inbox, tmp_path, students)
    out = tmp_path / "grades.csv"
    grader = subprocess.Popen(tc.SEGCOURSE + ["grade", str(inbox), "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    # stop it once some submissions are graded and before all are
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and grader.poll() is None:
        if (tmp_path / "autograder" / "gradebook.db").exists() and len(tc.ledger(env)) >= 2:
            break
        time.sleep(0.5)
    assert grader.poll() is None, "the batch ended before it could be interrupted"
    grader.send_signal(signal.SIGTERM)
    output, _ = grader.communicate(timeout=300)
    assert grader.returncode == 130, output[-3000:]
    assert not out.exists()  # an interrupted batch writes no CSV
    done_before = len(tc.ledger(env))
    assert 2 <= done_before < len(students)

    resumed = tc.grade(env, inbox, out)
    assert f"{len(students) - done_before} graded, {done_before} unchanged" in resumed.stdout
    assert out.read_bytes().decode() == _expected_csv(students)
    assert tc.submissions_in_gradebook(env) == {(s, tc.NAME): 1 for s in students}
    leftovers = [p.name for p in (tmp_path / "autograder" / ".grading").iterdir()
                 if p.name != ".lock"]
    assert leftovers == []
