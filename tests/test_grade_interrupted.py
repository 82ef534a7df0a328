"""An interrupted `segcourse grade` leaves nothing behind: no sandboxed process, no scratch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from segcourse.grader.sandbox import SANDBOX_UID_BASE, sandbox_problem

REPO = Path(__file__).resolve().parent.parent
NAME = "04_transposed_conv"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="counts sandbox processes by uid (root)")]


def _sandboxed_pids() -> list[int]:
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if SANDBOX_UID_BASE <= int(line.split()[1]) < SANDBOX_UID_BASE + 64:
            pids.append(int(status.parent.name))
    return pids


def test_sigterm_stops_every_sandbox_and_removes_every_scratch(tmp_path):
    assert sandbox_problem() is None, sandbox_problem()
    shutil.copytree(REPO / "notebooks" / NAME, tmp_path / "notebooks" / NAME)
    (tmp_path / "autograder").mkdir()
    shutil.copy(REPO / "autograder" / "nbgrader_config.py", tmp_path / "autograder")
    shutil.copytree(REPO / "autograder" / "references", tmp_path / "autograder" / "references")
    env = dict(os.environ, SEGCOURSE_COURSE_DIR=str(tmp_path / "autograder"),
               SEGCOURSE_REFERENCES=str(tmp_path / "autograder" / "references"))
    segcourse = [sys.executable, "-m", "segcourse.cli"]
    subprocess.run(segcourse + ["release", NAME], env=env, check=True, capture_output=True)
    release = nbformat.read(tmp_path / "autograder" / "release" / NAME / f"{NAME}.ipynb", 4)
    for student in ("spinner1", "spinner2"):
        notebook = nbformat.from_dict(release)
        notebook.cells.insert(1, nbformat.v4.new_code_cell(
            "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)\n"
            "while True:\n    pass"))
        folder = tmp_path / "inbox" / student / NAME
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{NAME}.ipynb")

    grader = subprocess.Popen(segcourse + ["grade", str(tmp_path / "inbox"), "--jobs", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not _sandboxed_pids() and time.monotonic() < deadline and grader.poll() is None:
        time.sleep(0.5)
    assert _sandboxed_pids(), "no sandboxed kernel started"
    time.sleep(3)
    grader.send_signal(signal.SIGTERM)
    grader.wait(timeout=120)
    time.sleep(1)
    assert _sandboxed_pids() == []
    left = [p.name for p in (tmp_path / "autograder" / ".grading").iterdir() if p.name != ".lock"]
    assert left == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(tmp_path) not in mounts
