"""nbgrader plumbing that makes every route to a student release give the same release.

- ``visible_references_hook(release_dir)``: a ``GenerateAssignment.post_convert_hook`` that adds
  the references of the *visible* checks (``references/`` next to the notebook) to the release,
  so the Formgrader's *Generate* button and plain ``nbgrader generate_assignment`` make what
  ``segcourse release`` makes. Without them, students' visible tests stop with
  ``ReferenceMissing``.
- ``ReleaseAssignment``: nbgrader's ``release_assignment`` (exchange) without the course's
  ``CourseDirectory.ignore`` patterns for references, so those visible references travel to the
  students with the notebook (the patterns still keep references out of generated releases'
  copied files and out of collected submissions).

Both are switched on in ``autograder/nbgrader_config.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from nbgrader.exchange.default.release_assignment import (
    ExchangeReleaseAssignment as _ExchangeReleaseAssignment,
)

__all__ = ["visible_references_hook", "add_visible_references", "ReleaseAssignment",
           "REFERENCE_PATTERNS"]

#: The ``CourseDirectory.ignore`` patterns that would drop a release's visible references.
REFERENCE_PATTERNS = ("references", "*.pt")

log = logging.getLogger(__name__)


def add_visible_references(release_dir: str | Path, notebooks: list[str]) -> list[Path]:
    """Copy the visible checks' references next to each released notebook.

    ``notebooks`` are nbgrader's source paths (``.../notebooks/NN_slug/NN_slug.ipynb``); the
    release of each is ``release_dir/NN_slug/NN_slug.ipynb``. Returns the released notebooks
    that got a ``references/`` folder (a notebook without checks gets none).
    """
    from .autograde import copy_visible_references  # torch: only when a release is made

    done = []
    for source in map(Path, notebooks):
        released = Path(release_dir) / source.parent.name / source.name
        if not released.exists():
            raise FileNotFoundError(f"nbgrader made no release {released}")
        copy_visible_references(released)
        if (released.parent / "references").is_dir():
            done.append(released)
    return done


def visible_references_hook(release_dir: str | Path) -> Callable[..., None]:
    """The ``post_convert_hook`` for ``GenerateAssignment`` of a course releasing into
    ``release_dir`` (an absolute path: nbgrader calls the hook with keywords only)."""

    def hook(assignment=None, student=None, notebooks=(), **_ignored) -> None:
        try:
            add_visible_references(release_dir, list(notebooks))
        except Exception as error:
            # nbgrader logs a failing hook at INFO level only: say it where it is seen.
            message = (f"segcourse: the release of {assignment} has NO visible references "
                       f"({type(error).__name__}: {error}); students' visible tests will stop "
                       "with ReferenceMissing. Run `segcourse release` to see the full error.")
            log.error(message)
            print(message, file=sys.stderr)
            raise

    hook.__qualname__ = hook.__name__ = "add_visible_references"
    return hook


class ReleaseAssignment(_ExchangeReleaseAssignment):
    """``nbgrader release_assignment`` that keeps the release's ``references/`` folder."""

    def do_copy(self, src, dest, log=None):
        ignore = list(self.coursedir.ignore)
        self.coursedir.ignore = [p for p in ignore if p not in REFERENCE_PATTERNS]
        try:
            return super().do_copy(src, dest, log)
        finally:
            self.coursedir.ignore = ignore
