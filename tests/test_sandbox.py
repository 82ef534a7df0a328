"""The grading sandbox on its own: what a process inside it can see and do.

Each test runs a small Python program inside a real bubblewrap sandbox (as `segcourse grade`
runs a kernel) and asserts on what it printed. The end-to-end attacks through nbgrader are in
``test_autograde_e2e.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segcourse.grader import autograde
from segcourse.grader.sandbox import (
    Limits,
    Sandbox,
    claim_slot,
    orphaned_processes,
    sandbox_problem,
)

REPO = Path(__file__).resolve().parent.parent

needs_sandbox = pytest.mark.skipif(sandbox_problem() is not None and not os.environ.get("CI"),
                                   reason=f"no sandbox here: {sandbox_problem()}")


def run_inside(tmp_path, program: str, limits: Limits | None = None, files=(), timeout=120):
    with claim_slot() as slot:
        sandbox = Sandbox(tmp_path / "scratch", slot=slot, limits=limits or Limits())
        sandbox.prepare(list(files))
        try:
            done = subprocess.run(sandbox.command([sys.executable, "-c", program]),
                                  capture_output=True, text=True, timeout=timeout)
            return done, sandbox
        finally:
            sandbox.close()


@needs_sandbox
def test_the_sandbox_works_here():
    assert sandbox_problem() is None


@needs_sandbox
def test_inside_is_an_unprivileged_user_with_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCOURSE_GRADEBOOK_URL", "postgresql://grader:secret@db/gradebook")
    done, _ = run_inside(tmp_path, "import os, json; print(json.dumps({'uid': os.getuid(), "
                                   "'env': dict(os.environ), 'cwd': os.getcwd()}))")
    seen = json.loads(done.stdout)
    assert seen["uid"] != 0
    assert "secret" not in done.stdout and "SEGCOURSE_GRADEBOOK_URL" not in seen["env"]
    assert seen["env"]["SEGCOURSE_RESULTS_DIR"] == "/results"
    assert seen["cwd"] == "/home/student/work"


@needs_sandbox
def test_secrets_and_the_repository_are_not_there(tmp_path):
    targets = [REPO / "autograder" / "references", REPO / "notebooks", REPO / "autograder",
               REPO / "README.md", Path.home() / ".cache", Path("/etc/shadow"),
               Path("/var"), Path("/srv"), Path("/opt")]
    program = ("import os, json; print(json.dumps({p: os.path.exists(p) for p in %r}))"
               % [str(t) for t in targets])
    done, _ = run_inside(tmp_path, program)
    seen = json.loads(done.stdout)
    assert not any(seen.values()), seen


@needs_sandbox
def test_the_package_is_read_only_and_the_home_writable(tmp_path):
    program = """
import os, segcourse
target = os.path.join(os.path.dirname(segcourse.__file__), "grading.py")
try:
    open(target, "a").write("# owned")
    print("package writable")
except OSError:
    print("package read-only")
open("notes.txt", "w").write("mine")
open("/tmp/t", "w").write("mine")
open("/results/r", "w").write("mine")
print("home writable")
"""
    done, _ = run_inside(tmp_path, program)
    assert "package read-only" in done.stdout and "home writable" in done.stdout, done.stderr


@needs_sandbox
def test_no_network(tmp_path):
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    program = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("reached the grader")
except OSError as error:
    print("no network:", error)
"""
    done, _ = run_inside(tmp_path, program)
    server.close()
    assert "no network" in done.stdout, done.stdout + done.stderr


@needs_sandbox
def test_limits_are_applied(tmp_path):
    program = """
import resource, json
print(json.dumps({name: resource.getrlimit(getattr(resource, name))[0] for name in
                  ["RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CPU", "RLIMIT_CORE"]}))
"""
    limits = Limits(memory=6 * 2**30, processes=100, file_size=2**20, cpu=50)
    done, _ = run_inside(tmp_path, program, limits)
    seen = json.loads(done.stdout)
    assert seen == {"RLIMIT_AS": 6 * 2**30, "RLIMIT_NPROC": 100, "RLIMIT_FSIZE": 2**20,
                    "RLIMIT_CPU": 50, "RLIMIT_CORE": 0}


@needs_sandbox
def test_a_file_larger_than_the_limit_cannot_be_written(tmp_path):
    program = """
try:
    with open("big", "wb") as handle:
        handle.write(b"x" * 4 * 2**20)
    print("wrote 4 MiB")
except OSError as error:
    print("stopped:", error)
"""
    done, _ = run_inside(tmp_path, program, Limits(file_size=2**20))
    assert "stopped" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the tmpfs disk cap needs root")
@needs_sandbox
def test_the_disk_cap_holds_for_many_files(tmp_path):
    program = """
written = 0
try:
    for i in range(64):
        with open(f"part{i}", "wb") as handle:
            handle.write(b"x" * 2**20)
        written += 1
    print("wrote", written)
except OSError as error:
    print("stopped after", written, error)
"""
    done, _ = run_inside(tmp_path, program, Limits(disk=16 * 2**20))
    assert "stopped after" in done.stdout, done.stdout + done.stderr


@needs_sandbox
def test_nothing_survives_the_sandbox(tmp_path):
    """A detached grandchild in its own session dies with the sandbox; the scratch is gone."""
    program = """
import os, subprocess, time
subprocess.Popen(["sleep", "300"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
print("spawned")
"""
    done, sandbox = run_inside(tmp_path, program)
    assert "spawned" in done.stdout
    time.sleep(0.5)
    assert sandbox.kill_leftovers() == 0  # nothing left with the sandbox's uid
    assert not sandbox.scratch.exists()


def test_grading_stops_with_one_clear_message_when_bubblewrap_is_missing(tmp_path, monkeypatch):
    (tmp_path / "inbox" / "alice" / "04_transposed_conv").mkdir(parents=True)
    monkeypatch.setattr("segcourse.grader.sandbox.find_bwrap", lambda: None)
    with pytest.raises(SystemExit, match="bubblewrap .*apt-get install bubblewrap.*--no-sandbox"):
        autograde.grade(tmp_path / "inbox")


def test_limits_become_prlimit_flags():
    flags = Limits(memory=2**30, processes=8, file_size=2**20, cpu=9, disk=1, wall=5).prlimit_args()
    assert flags == ["--as=1073741824", "--nproc=8", "--fsize=1048576", "--cpu=9",
                     "--nofile=1024", "--core=0"]
    assert "--as=0" not in Limits(memory=0).prlimit_args()


@needs_sandbox
def test_ipc_sockets_work_from_a_long_course_path(tmp_path):
    """The kernel's sockets live in a short folder: a Unix socket path may not exceed 107 bytes,
    and courses live in long paths."""
    import socket

    deep = tmp_path / ("a-long-course-folder-name-" * 6) / "autograder" / ".grading" / "student"
    sandbox = Sandbox(deep, slot=250).prepare([])
    try:
        assert len(str(sandbox.conn / "kernel-12345")) < 60
        program = """
import socket, time
server = socket.socket(socket.AF_UNIX)
server.bind("/run/kernel/probe")
server.listen()
connection, _ = server.accept()
connection.sendall(b"hello from the sandbox")
"""
        inside = subprocess.Popen(sandbox.command([sys.executable, "-c", program]))
        deadline = time.monotonic() + 60
        while not (sandbox.conn / "probe").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(sandbox.conn / "probe"))
        assert client.recv(100) == b"hello from the sandbox"
        client.close()
        inside.wait(timeout=30)
        short = sandbox.conn
    finally:
        sandbox.close()
    assert not short.exists() and not deep.exists()


def test_two_graders_never_share_a_slot():
    with claim_slot() as first, claim_slot() as second:
        assert first != second


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids exist only when grading as root")
@needs_sandbox
def test_a_process_left_in_a_released_slot_is_an_orphan(tmp_path):
    with claim_slot() as slot:
        sandbox = Sandbox(tmp_path / "scratch", slot=slot).prepare([])
        # a process with the sandbox's uid outside any sandbox: what a grader killed outright leaves
        stray = subprocess.Popen(["setpriv", f"--reuid={sandbox.uid}", f"--regid={sandbox.uid}",
                                  "--clear-groups", "sleep", "60"])
        time.sleep(0.5)
        assert stray.pid not in orphaned_processes()  # its slot is held: not an orphan
    try:
        assert stray.pid in orphaned_processes()
    finally:
        stray.kill()
        stray.wait()
        sandbox.close()
