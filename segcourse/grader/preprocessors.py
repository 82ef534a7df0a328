"""nbgrader preprocessors that make autograding hold against what students do.

Wired into ``autograder/nbgrader_config.py``:

- ``SafeExecute`` runs the notebook like nbgrader's ``Execute``, but with the kernel inside a
  fresh bubblewrap sandbox (``segcourse.grader.sandbox``) that holds no secrets, under a
  wall-clock cap on the whole notebook. When a cell kills the kernel (``os._exit``, a segfault,
  running out of memory), the notebook is re-run in a new sandbox with that cell skipped, at
  most ``MAX_CRASH_RETRIES`` times and never past the wall-clock cap, so a crash costs the
  points that depend on that cell and cannot multiply the grading time. A kernel that ignores
  interrupts or stops answering loses the cells from there on, nothing else. Everything that
  steers this (which cells crashed, the cap, the scratch) lives in the grader's process; the
  kernel cannot write any of it. Code cells tagged ``demo`` (training runs, experiments,
  figures, explorers, timings: cells no graded cell depends on) are not executed: the graded
  notebook and the feedback keep their source, with the outputs replaced by a one-line note
  (``DEMO_NOTE``), so a submission costs its exercises, not its experiments. A graded or
  solution cell always runs, whatever its tags (a student cannot skip a test by tagging it;
  ``tests/test_demo_cells.py`` rejects such a tag in the instructor notebooks).
- ``ForgetDuplicates`` runs after nbgrader's ``DeduplicateIds``, which empties the nbgrader
  metadata of a duplicated cell but leaves an empty dict that then fails schema validation for
  the *whole* notebook; it removes the empty dict, so the copy is an ordinary cell.
- ``ScoreChecks`` runs after the sandbox has ended, in the grader's process, for every graded
  test cell: it compares the outputs that ``grading.check`` saved (untrusted data, size-capped,
  loaded with ``weights_only``) with the references, which never entered the sandbox, and
  puts the verdict into the cell; a check that saved nothing fails. It also keeps stderr
  (warnings, progress bars) from zeroing a test, and removes ``execute_result`` outputs, which
  nbgrader would read as partial credit.

Configuration comes from the trusted driver (``segcourse grade``) through environment
variables of the nbgrader process: ``SEGCOURSE_SANDBOX`` (``bwrap`` or ``none``),
``SEGCOURSE_SCRATCH`` (where the sandbox's scratch goes), ``SEGCOURSE_SANDBOX_SLOT``,
``SEGCOURSE_LIMITS`` (JSON of ``Limits``), ``SEGCOURSE_RELEASE_FILES`` (JSON list of paths).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from nbgrader.utils import is_grade, is_solution

from ..grading import MAX_SAVED_BYTES
from ..runtime import device_name
from ..verify import CHECK_CALL_PATTERN, ReferenceMissing, verify
from .course import references_root
from .record import DEMO_TAG
from .sandbox import INSIDE_CONN, Limits, Sandbox

__all__ = ["ForgetDuplicates", "SafeExecute", "ScoreChecks", "SandboxedKernelManager",
           "MAX_CRASH_RETRIES", "DEMO_TAG", "DEMO_NOTE", "is_demo"]

MAX_CRASH_RETRIES = 2

#: What a skipped demo cell shows in the graded notebook and the feedback.
DEMO_NOTE = ("[demo cell: not run while grading; no grade depends on it. Its output appears when "
             "you run the notebook yourself.]\n")


def is_demo(cell) -> bool:
    """True for a code cell tagged ``demo`` that is neither a graded nor a solution cell.

    A graded (test) or solution cell is never skipped, whatever its tags: a tag is part of the
    submitted notebook, which the student controls.
    """
    if cell.get("cell_type") != "code":
        return False
    if DEMO_TAG not in cell.get("metadata", {}).get("tags", []):
        return False
    return not (is_grade(cell) or is_solution(cell))


def _error_output(ename: str, message: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=message,
                        traceback=[f"{ename}: {message}"])


class ForgetDuplicates(NbGraderPreprocessor):
    """Turn cells whose nbgrader metadata DeduplicateIds emptied into ordinary cells."""

    def preprocess_cell(self, cell, resources, cell_index):
        if "nbgrader" in cell.metadata and not cell.metadata["nbgrader"]:
            del cell.metadata["nbgrader"]
        return cell, resources


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel runs inside ``sandbox``, reached over IPC sockets.

    TCP would need the network, which the sandbox does not have; the sockets and the
    connection file live in the sandbox's own ``conn`` folder, which no other kernel sees.
    Interrupts go as messages: a signal would reach bubblewrap, not the kernel.
    """

    def __init__(self, sandbox: Sandbox, **kwargs):
        super().__init__(**kwargs)
        self.sandbox = sandbox
        self.transport = "ipc"
        self.ip = str(sandbox.conn / "kernel")
        self.connection_file = str(sandbox.conn / "kernel.json")

    def write_connection_file(self, **kwargs):
        """Write the grader's connection file, and the kernel's copy whose socket paths are
        the ones inside the sandbox (the same files, seen through the bind mount)."""
        result = super().write_connection_file(**kwargs)
        info = json.loads(Path(self.connection_file).read_text())
        info["ip"] = f"{INSIDE_CONN}/kernel"
        inside = self.sandbox.conn / "kernel-inside.json"
        inside.write_text(json.dumps(info))
        inside.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(inside, self.sandbox.uid, self.sandbox.uid)
        return result

    def format_kernel_cmd(self, extra_arguments=None):
        argv = super().format_kernel_cmd(extra_arguments)
        real = os.path.realpath(self.connection_file)
        argv = [f"{INSIDE_CONN}/kernel-inside.json" if arg == real else arg for arg in argv]
        return self.sandbox.command(argv)

    async def _async_interrupt_kernel(self) -> None:
        if self.has_kernel:
            self._connect_control_socket()
            self.session.send(self._control_socket, self.session.msg("interrupt_request", content={}))

    interrupt_kernel = _async_interrupt_kernel


class _WallClockExceeded(Exception):
    pass


class SafeExecute(Execute):
    """nbgrader's Execute with the kernel in a sandbox, a notebook wall-clock cap and crash
    isolation. Without ``SEGCOURSE_SANDBOX=bwrap`` the kernel runs unsandboxed (``--no-sandbox``)
    but still saves its outputs into a scratch folder of the grader's choosing."""

    def preprocess(self, nb, resources=None, km=None):
        resources = resources if resources is not None else {}
        limits = Limits(**json.loads(os.environ.get("SEGCOURSE_LIMITS", "{}")))
        deadline = time.monotonic() + (limits.wall or 10**9)
        scratch_root = Path(os.environ.get("SEGCOURSE_SCRATCH") or tempfile.mkdtemp(prefix="segcourse-"))
        resources["segcourse_scratch"] = str(scratch_root)
        original = copy.deepcopy(nb)
        self._demo_skipped: list[int] = []
        skip: dict[int, str] = {}
        for attempt in range(MAX_CRASH_RETRIES + 1):
            trial = copy.deepcopy(original)
            outcome = self._attempt(trial, resources, scratch_root / f"attempt{attempt}",
                                    limits, deadline, skip)
            if outcome is None or attempt == MAX_CRASH_RETRIES or time.monotonic() >= deadline:
                break
            skip[outcome] = "crashed"
            Sandbox(scratch_root / f"attempt{attempt}", slot=self._slot).close()
        resources["segcourse_results_dir"] = str(scratch_root / f"attempt{attempt}" / "results")
        # for the driver's status column; the scratch root is the grader's, never the kernel's
        (scratch_root / "report.json").write_text(json.dumps(
            {"crashed": sorted(skip), "stopped": self._stopped, "attempts": attempt + 1,
             "demo_skipped": self._demo_skipped}))
        return trial, resources

    def _attempt(self, nb, resources, scratch: Path, limits: Limits, deadline: float,
                 skip: dict[int, str]) -> int | None:
        """Execute once in a new sandbox; returns the index of a cell that killed the kernel
        (to retry without it), or None when the notebook ran to its end (or was cut)."""
        self._skip, self._deadline, self._current = skip, deadline, None
        self._stopped: str | None = None
        self.timeout_func = self._cell_timeout
        self._slot = slot = int(os.environ.get("SEGCOURSE_SANDBOX_SLOT", "0"))
        sandbox = Sandbox(scratch, slot=slot, limits=limits,
                          threads=int(os.environ.get("SEGCOURSE_THREADS", "1") or 1))
        files = [Path(p) for p in json.loads(os.environ.get("SEGCOURSE_RELEASE_FILES", "[]"))]
        sandboxed = os.environ.get("SEGCOURSE_SANDBOX", "none") == "bwrap"
        if sandboxed:
            sandbox.prepare(files)
            km = SandboxedKernelManager(sandbox, kernel_name=self.kernel_name)
        else:
            sandbox.results.mkdir(parents=True, exist_ok=True)
            os.environ["SEGCOURSE_RESULTS_DIR"] = str(sandbox.results)  # the kernel inherits it
            km = None
        crashed = None
        try:
            super().preprocess(nb, resources, km)
        except DeadKernelError:
            crashed = self._current
            self._stopped = f"cell {self._current} crashed the kernel"
            self._stop_from(nb, self._current, "KernelCrashed",
                            "this cell stopped the Python kernel (os._exit, a crash, or running "
                            "out of memory)")
        except (CellTimeoutError, _WallClockExceeded, TimeoutError) as error:
            self._stopped = f"cell {self._current}: {type(error).__name__}"
            self._stop_from(nb, self._current, "KernelUnresponsive",
                            f"the kernel stopped answering or the notebook ran past its "
                            f"{limits.wall} s limit ({type(error).__name__})")
        finally:
            os.environ.pop("SEGCOURSE_RESULTS_DIR", None)
            if sandboxed:
                sandbox.kill_leftovers()  # the sandbox has ended before anything is read
        self.nb = nb
        return crashed

    def _cell_timeout(self, cell) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _WallClockExceeded()
        return max(1, int(min(self.timeout or remaining, remaining)))

    def _stop_from(self, nb, index: int | None, ename: str, why: str) -> None:
        """Mark the cell that broke the kernel and every code cell after it as not run."""
        if index is None:
            return
        for position, cell in enumerate(nb.cells):
            if position < index or cell.cell_type != "code":
                continue
            if position == index:
                cell.outputs = [*cell.get("outputs", []), _error_output(ename, why + ".")]
            else:
                cell.outputs = [_error_output("NotRun", f"not run: cell {index} {why}.")]

    def preprocess_cell(self, cell, resources, index):
        if is_demo(cell):
            cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=DEMO_NOTE)]
            cell.execution_count = None
            if index not in self._demo_skipped:
                self._demo_skipped.append(index)
            return cell, self.resources
        if index in self._skip:
            if cell.cell_type == "code":
                cell.outputs = [_error_output(
                    "KernelCrashed",
                    "this cell stopped the Python kernel during grading (os._exit, a crash, "
                    "or running out of memory), so it was skipped; cells that need it fail too.",
                )]
            return cell, self.resources
        self._current = index
        return super().preprocess_cell(cell, resources, index)


class ScoreChecks(NbGraderPreprocessor):
    """Re-verify every ``grading.check`` of the graded test cells in the grader's process."""

    def preprocess(self, nb, resources):
        self._results = Path(resources.get("segcourse_results_dir", "/nonexistent"))
        try:
            return super().preprocess(nb, resources)
        finally:
            scratch = resources.get("segcourse_scratch")
            if scratch and not os.environ.get("SEGCOURSE_SCRATCH"):
                shutil.rmtree(scratch, ignore_errors=True)  # the driver removes its own

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code" or not is_grade(cell) or is_solution(cell):
            return cell, resources
        cell.outputs = [self._tame(output) for output in cell.outputs
                        if output.output_type != "execute_result"]
        if any(output.output_type == "error" for output in cell.outputs):
            return cell, resources  # already failed in the kernel
        for check_id in CHECK_CALL_PATTERN.findall(cell.source):
            problem = self._verify(check_id)
            if problem:
                cell.outputs.append(_error_output("CheckFailed", problem))
                break
            cell.outputs.append(NotebookNode(output_type="stream", name="stdout",
                                             text=f"\u2714 {check_id}: verified by the grader\n"))
        return cell, resources

    @staticmethod
    def _tame(output: NotebookNode) -> NotebookNode:
        """A warning on stderr must not zero a test: show it as ordinary output."""
        if output.output_type == "stream" and output.name == "stderr":
            return NotebookNode(output_type="stream", name="stdout", text=output.text)
        return output

    def _verify(self, check_id: str) -> str | None:
        path = self._results / f"{check_id}.pt"
        if not path.is_file() or path.is_symlink():
            return (f"{check_id}: the check did not save its outputs, so it did not run as "
                    "written (was segcourse.grading changed in this notebook?)")
        if path.stat().st_size > MAX_SAVED_BYTES:
            return f"{check_id}: the saved outputs are larger than {MAX_SAVED_BYTES} bytes"
        try:
            saved = torch.load(path, weights_only=True)
            if saved.get("check") != check_id:
                return f"{check_id}: the saved outputs belong to another check"
            # the grader's own device, not what the kernel claims, picks the tolerance
            sandboxed = os.environ.get("SEGCOURSE_SANDBOX") == "bwrap"  # kernels there use the CPU
            grading_device = "cpu" if sandboxed else device_name()
            problem, _, _ = verify(check_id, saved, grading_device, references_root())
        except ReferenceMissing as error:
            return str(error)
        except Exception as error:  # a malformed results file is the student's failure
            return f"{check_id}: could not read the saved outputs ({type(error).__name__})"
        return f"{check_id}, {problem}" if problem else None
