"""nbgrader preprocessors that make autograding hold against what students do.

Both are wired into ``autograder/nbgrader_config.py``:

- ``SafeExecute`` runs the notebook like nbgrader's ``Execute``, but (1) gives the kernel a
  fresh ``SEGCOURSE_RESULTS_DIR`` where ``grading.check`` saves the student's outputs, (2) writes
  the index of the cell it is running to ``SEGCOURSE_PROGRESS_FILE``, so that when a cell kills
  the kernel (``os._exit``, a segfault, memory exhaustion) ``segcourse grade`` knows which one,
  and (3) skips the cells listed in ``SEGCOURSE_SKIP_CELLS`` on the retry, marking them with an
  error. A crash then costs the points of the cells that need that cell, not the notebook.
- ``ForgetDuplicates`` runs after nbgrader's ``DeduplicateIds``, which empties the nbgrader
  metadata of a duplicated cell but leaves an empty dict that then fails schema validation for
  the *whole* notebook; it removes the empty dict, so the copy is an ordinary cell.
- ``ScoreChecks`` runs after execution, in the grader's process, for every graded test cell:
  it re-compares the outputs that ``grading.check`` saved with the references, so a kernel in
  which ``torch.allclose``, ``torch.testing.assert_close`` or ``segcourse.grading`` itself was
  patched gains nothing; a check that did not save outputs fails. It also keeps stderr (warnings,
  progress bars) from zeroing a test, and removes ``execute_result`` outputs, which nbgrader
  would read as partial credit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from nbgrader.utils import is_grade, is_solution

from . import grading
from .runtime import device_name

__all__ = ["ForgetDuplicates", "SafeExecute", "ScoreChecks"]


def _error_output(ename: str, message: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=message,
                        traceback=[f"{ename}: {message}"])


class ForgetDuplicates(NbGraderPreprocessor):
    """Turn cells whose nbgrader metadata DeduplicateIds emptied into ordinary cells."""

    def preprocess_cell(self, cell, resources, cell_index):
        if "nbgrader" in cell.metadata and not cell.metadata["nbgrader"]:
            del cell.metadata["nbgrader"]
        return cell, resources


class SafeExecute(Execute):
    """nbgrader's Execute, plus a results folder, a progress file and crash-cell skipping."""

    def preprocess(self, nb, resources=None, km=None):
        results = tempfile.mkdtemp(prefix="segcourse-results-")
        os.environ["SEGCOURSE_RESULTS_DIR"] = results  # the kernel inherits it
        os.environ.pop("SEGCOURSE_GRADING_MODE", None)  # never record while grading
        resources = resources if resources is not None else {}
        resources["segcourse_results_dir"] = results
        self._skip = set(json.loads(os.environ.get("SEGCOURSE_SKIP_CELLS", "[]")))
        self._progress = os.environ.get("SEGCOURSE_PROGRESS_FILE")
        try:
            return super().preprocess(nb, resources, km)
        finally:
            os.environ.pop("SEGCOURSE_RESULTS_DIR", None)

    def preprocess_cell(self, cell, resources, index):
        if index in self._skip:
            if cell.cell_type == "code":
                cell.outputs = [_error_output(
                    "KernelCrashed",
                    "this cell stopped the Python kernel during grading (os._exit, a crash, "
                    "or running out of memory), so it was skipped; cells that need it fail too.",
                )]
            return cell, self.resources
        if self._progress and cell.cell_type == "code":
            Path(self._progress).write_text(str(index))
        return super().preprocess_cell(cell, resources, index)


class ScoreChecks(NbGraderPreprocessor):
    """Re-verify every ``grading.check`` of the graded test cells in the grader's process."""

    def preprocess(self, nb, resources):
        self._results = Path(resources.get("segcourse_results_dir", "/nonexistent"))
        try:
            return super().preprocess(nb, resources)
        finally:
            shutil.rmtree(self._results, ignore_errors=True)

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code" or not is_grade(cell) or is_solution(cell):
            return cell, resources
        cell.outputs = [self._tame(output) for output in cell.outputs
                        if output.output_type != "execute_result"]
        if any(output.output_type == "error" for output in cell.outputs):
            return cell, resources  # already failed in the kernel
        for check_id in grading.CHECK_CALL_PATTERN.findall(cell.source):
            problem = self._verify(check_id)
            if problem:
                cell.outputs.append(_error_output("CheckFailed", problem))
                break
        return cell, resources

    @staticmethod
    def _tame(output: NotebookNode) -> NotebookNode:
        """A warning on stderr must not zero a test: show it as ordinary output."""
        if output.output_type == "stream" and output.name == "stderr":
            return NotebookNode(output_type="stream", name="stdout", text=output.text)
        return output

    def _verify(self, check_id: str) -> str | None:
        path = self._results / f"{check_id}.pt"
        if not path.exists():
            return (f"{check_id}: the check did not save its outputs, so it did not run as "
                    "written (was segcourse.grading changed in this notebook?)")
        try:
            saved = torch.load(path, weights_only=True)
            # the grader's own device, not what the kernel claims, picks the tolerance
            problem, _ = grading.verify(check_id, saved["outputs"], saved["inputs_sha256"],
                                        device_name())
        except grading.ReferenceMissing as error:
            return str(error)
        except Exception as error:  # a malformed results file is the student's failure
            return f"{check_id}: could not read the saved outputs ({type(error).__name__})"
        return f"{check_id}, {problem}" if problem else None
