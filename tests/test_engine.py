"""Grading engines: the cluster factory, the checks on workers, and a worker killed mid-batch.

The last test grades a batch of the tiny course (tests/tiny_course.py) on a Dask LocalCluster of
two workers through ``segcourse grade --scheduler``, kills the worker process running a
submission in the middle of it, and checks that every submission is graded once, correctly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from segcourse.grader import engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_course as tc  # noqa: E402

# ------------------------------------------------------------------------------ cluster factory


def test_slurm_builds_a_slurm_cluster_of_single_threaded_workers(monkeypatch):
    jobqueue = pytest.importorskip("dask_jobqueue", reason="dask-jobqueue not installed "
                                   "(the missing-package message is tested below)")
    scaled = []
    monkeypatch.setattr(jobqueue.SLURMCluster, "scale",
                        lambda self, *args, **kw: scaled.append((args, kw)))
    cluster = engine.make_cluster("slurm", 3, queue="cpu", walltime="01:00:00")
    try:
        assert isinstance(cluster, jobqueue.SLURMCluster)
        script = cluster.job_script()
        assert "#SBATCH -p cpu" in script and "#SBATCH -t 01:00:00" in script
        assert "--nthreads 1" in script and sys.executable in script
        assert scaled[0] == ((), {"jobs": 3})
    finally:
        cluster.close()


def test_kubernetes_builds_an_operator_cluster(monkeypatch):
    made = {}

    class KubeCluster:
        def __init__(self, **kwargs):
            made.update(kwargs)

    operator = types.ModuleType("dask_kubernetes.operator")
    operator.KubeCluster = KubeCluster
    monkeypatch.setitem(sys.modules, "dask_kubernetes", types.ModuleType("dask_kubernetes"))
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", operator)
    cluster = engine.make_cluster("kubernetes", 5, image="registry.example/segcourse:1")
    assert isinstance(cluster, KubeCluster)
    assert made["n_workers"] == 5 and made["image"] == "registry.example/segcourse:1"
    assert made["resources"]["requests"]["cpu"] == "1"


@pytest.mark.parametrize("kind, package, extra", [
    ("slurm", "dask-jobqueue", "slurm"),
    ("kubernetes", "dask-kubernetes", "kubernetes"),
    ("dask", "distributed", "dev"),
])
def test_a_missing_cluster_package_says_what_to_install(monkeypatch, kind, package, extra):
    blocked = {"slurm": "dask_jobqueue", "kubernetes": "dask_kubernetes",
               "dask": "distributed"}[kind]
    for module in [blocked, f"{blocked}.operator"]:
        monkeypatch.setitem(sys.modules, module, None)  # `import` of it raises ImportError
    with pytest.raises(SystemExit, match=f"pip install {package}.*\\[{extra}\\]"):
        engine.make_cluster(kind, 2)


def test_the_default_engine_is_the_local_pool():
    assert isinstance(engine.make_engine(), engine.LocalEngine)
    assert isinstance(engine.make_engine("dask", 2), engine.DaskEngine)
    assert isinstance(engine.make_engine("local", 2, scheduler="tcp://x:8786"), engine.DaskEngine)
    with pytest.raises(SystemExit, match="unknown engine"):
        engine.make_engine("spark")


# ------------------------------------------------------------------------------ worker checks


class _FakeClient:
    def __init__(self, found):
        self.found = found

    def run(self, function, *args):
        return self.found


def _info(host=None, sees=True, sandbox=None):
    return {"host": host or socket.gethostname(), "sees_course": sees, "python": sys.executable,
            "sandbox": sandbox}


def test_a_worker_that_does_not_see_the_course_stops_with_a_clear_message(tmp_path):
    client = _FakeClient({"tcp://a:1": _info(), "tcp://b:2": _info("other", sees=False)})
    with pytest.raises(SystemExit, match="tcp://b:2 do not see the course folder.*filesystem every worker mounts"):
        engine.check_workers(client, tmp_path, "postgresql://u@h/db", sandbox=False)
    assert not list((tmp_path / ".grading").glob(".probe-*"))  # the token is removed


def test_the_probe_sees_the_token_only_in_the_same_folder(tmp_path):
    (tmp_path / ".grading").mkdir()
    (tmp_path / ".grading" / ".probe-x").write_text("secret")
    assert engine._course_probe(str(tmp_path), ".probe-x", "secret", False)["sees_course"]
    assert not engine._course_probe(str(tmp_path / "other"), ".probe-x", "secret",
                                    False)["sees_course"]
    assert not engine._course_probe(str(tmp_path), ".probe-x", "another", False)["sees_course"]


def test_remote_workers_cannot_share_a_sqlite_gradebook(tmp_path):
    client = _FakeClient({"tcp://a:1": _info("node-7")})
    with pytest.raises(SystemExit, match="SQLite.*--db postgresql://"):
        engine.check_workers(client, tmp_path, "sqlite:////x/gradebook.db", sandbox=False)
    engine.check_workers(client, tmp_path, "postgresql://u@h/db", sandbox=False)
    engine.check_workers(_FakeClient({"tcp://a:1": _info()}), tmp_path, "sqlite:////x/g.db",
                         sandbox=False)  # same machine: fine


def test_a_worker_without_a_sandbox_is_named(tmp_path):
    client = _FakeClient({"tcp://a:1": _info(sandbox="bubblewrap (bwrap) is not installed")})
    with pytest.raises(SystemExit, match="worker tcp://a:1 cannot make a sandbox: bubblewrap"):
        engine.check_workers(client, tmp_path, "postgresql://u@h/db", sandbox=True)


def test_transient_outcomes_are_not_final():
    assert engine._result(lambda: {"status": "ok", "final": True})["final"]

    class KilledWorker(Exception):
        pass

    def killed():
        raise KilledWorker("lost three times")

    assert engine._result(killed) == {"status": "error: worker lost", "final": False}


# ------------------------------------------------------------------------------ a worker killed


def _pids_of(client) -> dict[str, int]:
    return client.run(os.getpid)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="grades in the sandbox as root (CI)")
def test_a_worker_killed_mid_batch_loses_no_submission(tmp_path):
    from distributed import Client, LocalCluster

    from segcourse.grader.sandbox import orphaned_processes, sandbox_problem

    assert sandbox_problem() is None, sandbox_problem()
    env = tc.make_course(tmp_path)
    students = {"ann": ("solved", 12), "ben": ("wrong", 12), "cid": ("solved", 0),
                "dee": ("blank", 0), "eve": ("solved", 0)}
    tc.write_submissions(tmp_path / "inbox", tmp_path, students)
    out = tmp_path / "grades.csv"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        grader = subprocess.Popen(
            tc.SEGCOURSE + ["grade", str(tmp_path / "inbox"), "--scheduler",
                            cluster.scheduler_address, "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # wait until a worker runs a submission's sandbox (a kernel started), then kill it
        deadline, victim = time.monotonic() + 400, None
        while time.monotonic() < deadline and grader.poll() is None and victim is None:
            busy = [worker for worker, keys in client.processing().items() if keys]
            if busy and tc.sandboxes_running(tmp_path):
                victim = busy[0]
            else:
                time.sleep(0.5)
        assert victim is not None, "no submission was seen running"
        time.sleep(3)
        os.kill(_pids_of(client)[victim], signal.SIGKILL)
        output, _ = grader.communicate(timeout=900)
    assert grader.returncode == 0, output[-4000:]
    rows = tc.rows(out)
    assert sorted(rows) == sorted(students)
    for student, (kind, _) in students.items():
        assert float(rows[student]["score"]) == tc.expected(kind), (student, rows[student])
        assert rows[student]["status"] == "ok", rows[student]
    assert f"{len(students)} graded" in output
    assert tc.submissions_in_gradebook(env) == {(s, tc.NAME): 1 for s in students}
    assert orphaned_processes() == []
    leftovers = [p.name for p in (tmp_path / "autograder" / ".grading").iterdir()
                 if p.name != ".lock"]
    assert leftovers == []
