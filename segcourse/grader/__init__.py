"""The trusted side of grading. Nothing in this package runs in a student's kernel.

The trust boundary, in one picture::

    student's kernel (sandboxed)                 trusted grader (this package)
    ----------------------------                 -----------------------------
    segcourse.grading.check                      record.py      reference runs -> references
      runs the student's function on             sandbox.py     one bubblewrap sandbox per
      canonical inputs and saves the                            submission: no network, no
      outputs in its results folder                             secrets, limits, clean-up
      (no reference is read)          ------->   preprocessors.py  nbgrader steps: execute in
                                      outputs                   the sandbox, then re-compare
                                                                every check with the references
                                                 autograde.py   release, grade many submissions,
                                                                audit the gradebook, the CSV

Both sides compare with ``segcourse.verify`` (pure functions). The kernel uses it only for
feedback on a student's own machine; grades come from ``ScoreChecks``, which runs in the
grader's process after the sandbox has ended, on outputs it treats as untrusted data.
"""

from .course import check_ids_in_notebook, course_dir, find_notebooks

__all__ = ["course_dir", "find_notebooks", "check_ids_in_notebook"]
