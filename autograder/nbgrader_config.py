"""nbgrader configuration of the segcourse course.

The course root is the repository: instructor notebooks in notebooks/ are nbgrader's source
directory, and everything nbgrader generates goes under autograder/ (not committed). Run nbgrader
commands from the repository root (its nbgrader_config.py loads this file; that is how the
Formgrader of `make lab` finds the course) or from this folder, or through `segcourse release`
and `segcourse grade`.
"""

import os
from pathlib import Path

from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    ClearOutput,
    DeduplicateIds,
    IgnorePattern,
    LimitOutput,
    OverwriteCells,
    OverwriteKernelspec,
    SaveAutoGrades,
)

from segcourse.grader.preprocessors import ForgetDuplicates, SafeExecute, ScoreChecks
from segcourse.grader.release_hook import visible_references_hook

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

HERE = Path(__file__).resolve().parent

c.CourseDirectory.course_id = "segcourse"
c.CourseDirectory.root = str(HERE.parent)
c.CourseDirectory.source_directory = "notebooks"
c.CourseDirectory.release_directory = "autograder/release"
# Every route to a release (`segcourse release`, `nbgrader generate_assignment`, the Formgrader's
# Generate button) adds the references of the visible checks next to the student notebook.
c.GenerateAssignment.post_convert_hook = visible_references_hook(
    HERE.parent / c.CourseDirectory.release_directory
)
c.CourseDirectory.submitted_directory = os.environ.get(
    "SEGCOURSE_SUBMITTED_DIR", "autograder/submitted"
)
c.CourseDirectory.autograded_directory = "autograder/autograded"
c.CourseDirectory.feedback_directory = "autograder/feedback"
c.CourseDirectory.db_url = os.environ.get(
    "SEGCOURSE_GRADEBOOK_URL", f"sqlite:///{HERE / 'gradebook.db'}"
)
# Nothing but the notebook itself (and files it needs) may travel into a student release.
c.CourseDirectory.ignore = [
    ".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.pt", "*.pth",
    "references", "solutions", "*.secret",
]

# nbgrader's exchange for a course on one machine (release_assignment, fetch_assignment, submit,
# collect, fetch_feedback; the Assignment List and Courses tabs): a folder every student can
# write to. Default: autograder/exchange/ (made by `make exchange`); for students with their own
# Unix accounts, a shared folder such as /srv/nbgrader/exchange (see the README).
c.Exchange.root = os.environ.get("SEGCOURSE_EXCHANGE", str(HERE / "exchange"))
# release_assignment keeps the release's references/ folder (CourseDirectory.ignore drops it).
c.ExchangeFactory.release_assignment = "segcourse.grader.release_hook.ReleaseAssignment"

# The python3 kernel of the environment that runs nbgrader, whatever the notebook says.
c.Execute.kernel_name = "python3"
# Long enough for the training cells; an infinite loop is interrupted after this many seconds.
c.Execute.timeout = int(os.environ.get("SEGCOURSE_CELL_TIMEOUT", "600"))
c.Execute.interrupt_on_timeout = True

# Warnings must not zero a test: drop the common ones (ScoreChecks shows any other stderr as
# ordinary output rather than failing the cell).
c.IgnorePattern.pattern = r"(?:Warning|warn\(|it/s\]|s/it\])"

# A duplicated cell must cost nothing but itself (nbgrader would reject the whole notebook).
c.Autograde.sanitize_preprocessors = [
    ClearOutput,
    DeduplicateIds,
    ForgetDuplicates,
    OverwriteKernelspec,
    OverwriteCells,
    CheckCellMetadata,
]
# Autograde with SafeExecute (results folder, crash isolation) and ScoreChecks (re-verifies every
# grading.check in the grader's own process) around nbgrader's own steps. SafeExecute does not
# run code cells tagged `demo` (training runs, experiments, figures, explorers, timings that no
# graded cell depends on; tests/test_demo_cells.py checks the tags): they keep their source and
# show a one-line note instead of outputs, so a submission costs its exercises. Graded and
# solution cells always run, whatever their tags.
c.Autograde.autograde_preprocessors = [
    SafeExecute,
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    ScoreChecks,
    SaveAutoGrades,
    AssignLatePenalties,
    CheckCellMetadata,
]
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
