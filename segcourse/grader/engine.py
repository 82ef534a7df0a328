"""Where submissions are graded: a pool on this machine (default) or a Dask cluster.

The unit of work is one sandboxed submission, ``grade_submission(spec)``: it claims a sandbox slot
on the machine it runs on, runs ``nbgrader autograde`` for one (student, assignment) with the
kernel in its bubblewrap sandbox, removes the scratch and returns a status. The driver
(``autograde.grade``) stages the submissions, prepares the gradebook, hands the specs to an
engine, records each result as it arrives and reads the scores from the gradebook at the end:
the table and the CSV are the same whatever the engine.

- ``LocalEngine(jobs)``: ``jobs`` threads in this process, each driving one nbgrader process (as
  simple as before; no Dask needed).
- ``DaskEngine``: Dask distributed. ``--engine dask`` starts a ``LocalCluster`` of ``--jobs``
  worker processes (one thread each: one submission per worker at a time); ``--scheduler
  ADDRESS`` uses a running cluster; ``make_cluster("slurm" | "kubernetes", workers)`` builds one
  with dask-jobqueue's ``SLURMCluster`` or the dask-kubernetes operator's ``KubeCluster``
  (optional packages, imported only then). A worker that dies mid-batch (killed, out of memory,
  its node lost) loses no submission: the scheduler runs its task again on another worker (up to
  ``distributed.scheduler.allowed-failures`` times), and the nbgrader process it was running dies
  with it (``PR_SET_PDEATHSIG``; the sandbox dies with nbgrader), so no grade is written twice.

Workers on other machines must see the course folder at the same path (a shared filesystem:
NFS, CephFS, Lustre, ...) and have the same environment installed (same path to the venv);
``check_workers`` verifies the first with a token file and stops with a clear message otherwise.
A SQLite gradebook cannot be shared between machines: use ``--db postgresql://...``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .gradebook import backoff, is_sqlite, is_transient
from .sandbox import Limits, Sandbox, claim_slot

__all__ = ["grade_submission", "stop_batch", "LocalEngine", "DaskEngine", "make_cluster",
           "check_workers", "make_engine", "ENGINES", "MissingPackage"]

ENGINES = ("local", "dask", "slurm", "kubernetes")
MAX_CONFLICT_RETRIES = 8
GRADER_MARGIN = 180  # seconds the nbgrader process may take beyond the notebook's cap
TRANSIENT_STATUSES = ("error: grading was interrupted", "error: the gradebook stayed busy",
                      "error: worker lost")


class MissingPackage(SystemExit):
    """An optional package an engine needs is not installed (the message says what to install)."""


# --------------------------------------------------------------------------------------------
# One submission (runs on a worker, or in a thread of the driver)
# --------------------------------------------------------------------------------------------


class _Processes:
    """nbgrader processes this process started for one batch, so that stopping the batch
    (Ctrl-C, SIGTERM, the driver's request to a worker) leaves nothing running."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.stopping = False


_BATCHES: dict[str, _Processes] = {}
_LOCK = threading.Lock()


def _batch(batch_id: str) -> _Processes:
    with _LOCK:
        return _BATCHES.setdefault(batch_id, _Processes())


def stop_batch(batch_id: str) -> int:
    """Kill every nbgrader process of ``batch_id`` started by this process; returns how many.
    Later submissions of the batch in this process return at once."""
    processes = _batch(batch_id)
    with _LOCK:
        processes.stopping = True
        running = list(processes.running)
    for process in running:
        _kill_group(process)
    return len(running)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started us ends (the worker died). That
    thread waits for the child, so it ends only with the child or with its process."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _run(batch_id: str, command: list[str], cwd: Path, env: dict,
         timeout: float) -> tuple[int | None, str]:
    processes = _batch(batch_id)
    with _LOCK:
        if processes.stopping:
            return None, "grading was interrupted"
        process = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        processes.running.add(process)
    try:
        output, _ = process.communicate(timeout=timeout)
        if processes.stopping and process.returncode != 0:
            return None, "grading was interrupted"
        return process.returncode, output
    except subprocess.TimeoutExpired:
        _kill_group(process)
        output, _ = process.communicate()
        return None, output + f"\n(stopped: grading took more than {timeout:.0f} s)"
    finally:
        with _LOCK:
            processes.running.discard(process)


def _release_files(course: Path, assignment: str) -> list[Path]:
    """What the release ships beside the notebook (data files, say), without its references:
    the kernel needs no reference while autograding."""
    folder = course / "release" / assignment
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name != "references" and p.suffix != ".ipynb" and not p.is_symlink())


def _env_with_bin(env: dict) -> dict:
    """nbgrader runs the `alembic` command of its environment: put its bin first."""
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _kernel_threads(spec: dict) -> int:
    if spec.get("threads"):
        return int(spec["threads"])
    try:  # on a Dask worker: its cores shared by the submissions it runs at once
        from distributed import get_worker

        per_worker = max(1, int(getattr(get_worker(), "nthreads", 1) or 1))
    except (ImportError, ValueError):
        per_worker = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // per_worker)


def grade_submission(spec: dict) -> dict:
    """Autograde one submission in its sandbox. ``spec`` (plain data, so that it travels to a
    Dask worker): course, stage, scratch, env (SEGCOURSE_COURSE_DIR, SEGCOURSE_REFERENCES,
    SEGCOURSE_GRADEBOOK_URL), student, assignment, batch, limits (dict), timeout, sandbox,
    threads. Returns ``{"status": ..., "final": bool, "host": ..., "seconds": ...}``; ``final``
    is False for outcomes that say nothing about the submission (interrupted, gradebook busy),
    which are graded again next time."""
    start = time.monotonic()
    course, student, assignment = Path(spec["course"]), spec["student"], spec["assignment"]
    stage, scratch_root = Path(spec["stage"]), Path(spec["scratch"])
    limits = Limits(**spec["limits"])
    result = {"host": socket.gethostname(), "pid": os.getpid()}
    with claim_slot() as slot:
        scratch = Path(tempfile.mkdtemp(prefix=f"{student}-{assignment}-", dir=scratch_root))
        try:
            env = _env_with_bin(dict(os.environ))
            env.update(spec.get("env", {}))
            files = _release_files(course, assignment) + \
                sorted((stage / student / assignment).iterdir())
            env.update(SEGCOURSE_SUBMITTED_DIR=str(stage), SEGCOURSE_SCRATCH=str(scratch),
                       SEGCOURSE_SANDBOX="bwrap" if spec["sandbox"] else "none",
                       SEGCOURSE_SANDBOX_SLOT=str(slot),
                       SEGCOURSE_LIMITS=json.dumps(spec["limits"]),
                       SEGCOURSE_RELEASE_FILES=json.dumps([str(p) for p in files]),
                       SEGCOURSE_THREADS=str(_kernel_threads(spec)),
                       PYTHONUNBUFFERED="1")
            if spec.get("timeout"):
                env["SEGCOURSE_CELL_TIMEOUT"] = str(spec["timeout"])
            command = [sys.executable, "-m", "nbgrader", "autograde", assignment,
                       "--student", student, "--force"]
            cap = (limits.wall or 10**6) + GRADER_MARGIN
            for tries in range(MAX_CONFLICT_RETRIES + 1):
                code, log = _run(spec["batch"], command, course, env, cap)
                if code == 0:
                    result.update(status=_status_from_report(scratch / "report.json"), final=True)
                    break
                if code is None and log == "grading was interrupted":
                    result.update(status="error: grading was interrupted", final=False)
                    break
                if is_transient(log) and tries < MAX_CONFLICT_RETRIES:
                    time.sleep(backoff(tries, base=0.5))  # another writer: run it again
                    continue
                if is_transient(log):
                    result.update(status="error: the gradebook stayed busy", final=False)
                    break
                _keep_log(course, student, assignment, log)
                result.update(status=_failure_status(log), final=True)
                break
        finally:
            Sandbox(scratch, slot=slot).close()  # its attempts' sandboxes too
    result["seconds"] = time.monotonic() - start
    return result


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


def _keep_log(course: Path, student: str, assignment: str, log: str) -> None:
    """nbgrader's log of a failed submission, for the instructor: autograded/STUDENT/ASSIGNMENT.log."""
    folder = course / "autograded" / student
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


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


class LocalEngine:
    """``jobs`` submissions at a time on this machine, in threads of this process."""

    name = "local"

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)
        self.workers = self.jobs

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def check(self, course: Path, db: str, sandbox: bool) -> None:
        pass

    def run(self, specs: list[dict]) -> Iterator[tuple[dict, dict]]:
        """Yield (spec, result) as submissions finish."""
        if not specs:
            return
        batch_id = specs[0]["batch"]
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = {pool.submit(grade_submission, spec): spec for spec in specs}
            try:
                for future in as_completed(futures):
                    yield futures[future], _result(future.result)
            except BaseException:
                stop_batch(batch_id)
                for future in futures:
                    future.cancel()
                raise


def _result(get) -> dict:
    try:
        return get()
    except Exception as error:  # never lose the batch to one submission
        name = type(error).__name__
        if name == "KilledWorker":
            return {"status": "error: worker lost", "final": False}
        return {"status": f"error: {name}: {error}", "final": False}


def _need(module: str, package: str, what: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackage(f"segcourse grade: {what} needs the Python package {package}: "
                             f"pip install {package} (or, in the course's folder, "
                             f"pip install -e '.[{extra}]')") from None


def make_cluster(kind: str, workers: int, **options):
    """A Dask cluster of ``workers`` single-threaded workers.

    ``local``: ``distributed.LocalCluster`` on this machine. ``slurm``: dask-jobqueue's
    ``SLURMCluster`` (``options``: queue, account, walltime, cores, memory, job_extra_directives,
    python, ...: passed through), one SLURM job per worker. ``kubernetes``: the dask-kubernetes
    operator's ``KubeCluster`` (``options``: name, image, namespace, resources, env, ...), which
    needs the operator installed in the Kubernetes cluster. The packages of the last two are
    optional and imported here only: a missing one stops with what to install.
    """
    if kind in ("local", "dask"):
        distributed = _need("distributed", "distributed", "--engine dask", "dev")
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        memory_limit=0, dashboard_address=options.pop(
                                            "dashboard_address", None), **options)
    if kind == "slurm":
        jobqueue = _need("dask_jobqueue", "dask-jobqueue", "--engine slurm", "slurm")
        settings = dict(cores=1, processes=1, memory="8GiB", walltime="04:00:00",
                        job_name="segcourse-grade")
        settings.update(options)
        cluster = jobqueue.SLURMCluster(**settings)
        cluster.scale(jobs=workers)
        return cluster
    if kind == "kubernetes":
        operator = _need("dask_kubernetes.operator", "dask-kubernetes", "--engine kubernetes", "kubernetes")
        settings = dict(name="segcourse-grade", n_workers=workers,
                        image=os.environ.get("SEGCOURSE_WORKER_IMAGE", "ghcr.io/dask/dask:latest"),
                        resources={"requests": {"cpu": "1", "memory": "8Gi"},
                                   "limits": {"cpu": "2", "memory": "10Gi"}})
        settings.update(options)
        return operator.KubeCluster(**settings)
    raise ValueError(f"unknown cluster kind {kind!r}; choose from {ENGINES}")


def _course_probe(course: str, token_name: str, token: str, sandbox: bool) -> dict:
    """Runs on each worker: does it see the course (the token the driver wrote) and can it
    make a sandbox?"""
    from .sandbox import sandbox_problem

    path = Path(course) / ".grading" / token_name
    try:
        sees = path.read_text() == token
    except OSError:
        sees = False
    return {"host": socket.gethostname(), "sees_course": sees, "python": sys.executable,
            "sandbox": sandbox_problem() if sandbox else None}


def check_workers(client, course: Path, db: str, sandbox: bool) -> dict:
    """Stop with a clear message unless every worker sees the course folder at the same path
    (a shared filesystem), can make a sandbox, and can reach a shared gradebook."""
    name = f".probe-{secrets.token_hex(8)}"
    token = secrets.token_hex(16)
    probe = course / ".grading" / name
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(token)
    try:
        found = client.run(_course_probe, str(course), name, token, sandbox)
    finally:
        probe.unlink(missing_ok=True)
    if not found:
        raise SystemExit("segcourse grade: the Dask cluster has no workers")
    blind = sorted(address for address, info in found.items() if not info["sees_course"])
    if blind:
        raise SystemExit(
            f"segcourse grade: worker(s) {', '.join(blind)} do not see the course folder {course} "
            "(or see another copy of it): put the course (the repository with notebooks/ and "
            "autograder/, and the submissions) on a filesystem every worker mounts at the same "
            "path (NFS, CephFS, ...), and install the same environment at the same path there")
    broken = {address: info["sandbox"] for address, info in found.items() if info["sandbox"]}
    if broken:
        address, problem = sorted(broken.items())[0]
        raise SystemExit(f"segcourse grade: worker {address} cannot make a sandbox: {problem}")
    here = socket.gethostname()
    if is_sqlite(db) and any(info["host"] != here for info in found.values()):
        raise SystemExit(
            "segcourse grade: workers on other machines cannot share a SQLite gradebook; use a "
            "server: --db postgresql://USER@HOST/DB (or SEGCOURSE_GRADEBOOK_URL)")
    return found


class DaskEngine:
    """Submissions as Dask tasks: a LocalCluster of ``jobs`` workers, the cluster at
    ``scheduler``, or a SLURM / Kubernetes cluster built by ``make_cluster``."""

    def __init__(self, jobs: int = 1, scheduler: str | None = None, kind: str = "dask",
                 cluster_options: dict | None = None, allowed_failures: int = 3):
        self.jobs, self.scheduler, self.kind = max(1, jobs), scheduler, kind
        self.cluster_options = cluster_options or {}
        self.allowed_failures = allowed_failures
        self.cluster = self.client = None
        self.name = f"Dask at {scheduler}" if scheduler else {
            "dask": "a Dask LocalCluster", "local": "a Dask LocalCluster",
            "slurm": "Dask on SLURM", "kubernetes": "Dask on Kubernetes"}[kind]
        self._config = None

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info()["workers"]) if self.client else self.jobs

    def __enter__(self) -> DaskEngine:
        distributed = _need("distributed", "distributed", "--engine dask", "dev")
        import dask

        self._config = dask.config.set({
            "distributed.scheduler.allowed-failures": self.allowed_failures,
            # a submission runs for minutes: never steal it, and keep a quiet log
            "distributed.scheduler.work-stealing": False,
        })
        self._config.__enter__()
        if self.scheduler:
            self.client = distributed.Client(self.scheduler)
        else:
            self.cluster = make_cluster(self.kind, self.jobs, **self.cluster_options)
            self.client = distributed.Client(self.cluster)
            if self.kind in ("local", "dask"):
                self.client.wait_for_workers(self.jobs, timeout=300)
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.client is not None:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        finally:
            if self._config is not None:
                self._config.__exit__(None, None, None)

    def check(self, course: Path, db: str, sandbox: bool) -> None:
        check_workers(self.client, course, db, sandbox)

    def run(self, specs: list[dict]) -> Iterator[tuple[dict, dict]]:
        from distributed import as_completed as dask_completed

        if not specs:
            return
        batch_id = specs[0]["batch"]
        futures = {}
        for spec in specs:
            key = f"grade-{spec['student']}-{spec['assignment']}-{batch_id}"
            futures[self.client.submit(grade_submission, spec, key=key, pure=False)] = spec
        try:
            for future in dask_completed(list(futures)):
                yield futures[future], _result(future.result)
        except BaseException:
            self.client.cancel(list(futures))
            try:
                self.client.run(stop_batch, batch_id)
            except Exception:
                pass
            raise


def make_engine(engine: str = "local", jobs: int = 1, scheduler: str | None = None,
                cluster_options: dict | None = None):
    if scheduler:
        return DaskEngine(jobs, scheduler=scheduler)
    if engine == "local":
        return LocalEngine(jobs)
    if engine in ("dask", "slurm", "kubernetes"):
        return DaskEngine(jobs, kind=engine, cluster_options=cluster_options)
    raise SystemExit(f"segcourse grade: unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
