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

from segcourse.grader.sandbox import orphaned_processes, sandbox_problem

REPO = Path(__file__).resolve().parent.parent
NAME = "04_transposed_conv"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="counts sandbox processes by uid (root)")]


def _mounted_under(folder: Path) -> bool:
    return str(folder) in Path("/proc/self/mounts").read_text()


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
    while not _mounted_under(tmp_path) and time.monotonic() < deadline and grader.poll() is None:
        time.sleep(0.5)
    assert _mounted_under(tmp_path), "no sandbox was made"
    time.sleep(8)  # the kernels start, spawn their `sleep` and spin
    grader.send_signal(signal.SIGTERM)
    grader.wait(timeout=120)
    time.sleep(1)
    # other graders may be running (other tests): only processes of sandboxes whose slot no
    # grader holds any more are leftovers
    assert orphaned_processes() == []
    left = [p.name for p in (tmp_path / "autograder" / ".grading").iterdir() if p.name != ".lock"]
    assert left == []
    assert not _mounted_under(tmp_path)
