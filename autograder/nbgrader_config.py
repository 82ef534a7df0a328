"""nbgrader configuration of the segcourse course.

The course root is the repository: instructor notebooks in notebooks/ are nbgrader's source
directory, and everything nbgrader generates goes under autograder/ (not committed). Run nbgrader
commands from this folder (`cd autograder && nbgrader ...`) or through `segcourse release` and
`segcourse grade`.
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

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

HERE = Path(__file__).resolve().parent

c.CourseDirectory.course_id = "segcourse"
c.CourseDirectory.root = str(HERE.parent)
c.CourseDirectory.source_directory = "notebooks"
c.CourseDirectory.release_directory = "autograder/release"
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
# grading.check in the grader's own process) around nbgrader's own steps.
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
