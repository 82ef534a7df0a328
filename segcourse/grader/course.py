"""Where the course lives: the nbgrader course folder and the instructor notebooks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..verify import CHECK_CALL_PATTERN

__all__ = ["REPO", "course_dir", "find_notebooks", "notebook_cells", "cell_source",
           "check_ids_in_notebook", "references_root"]

REPO = Path(__file__).resolve().parent.parent.parent


def course_dir() -> Path:
    """The nbgrader course folder: ``$SEGCOURSE_COURSE_DIR`` or the repository's ``autograder/``.

    Its parent holds ``notebooks/`` (nbgrader's source directory).
    """
    return Path(os.environ.get("SEGCOURSE_COURSE_DIR", REPO / "autograder")).resolve()


def references_root() -> Path:
    """Where the references are kept: ``$SEGCOURSE_REFERENCES`` or ``<course>/references``."""
    return Path(os.environ.get("SEGCOURSE_REFERENCES", course_dir() / "references"))


def find_notebooks(names: list[str] | None = None) -> list[Path]:
    """Instructor notebooks ``notebooks/NN_slug/NN_slug.ipynb``, all or the named ones."""
    found = sorted((course_dir().parent / "notebooks").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))
    if not names:
        return found
    by_name = {path.stem: path for path in found}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise SystemExit(f"unknown notebook(s) {missing}; known: {sorted(by_name)}")
    return [by_name[name] for name in names]


def notebook_cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["cells"]


def cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def check_ids_in_notebook(path: Path) -> list[str]:
    """Every check id that the notebook's cells pass to ``grading.check``."""
    ids = []
    for cell in notebook_cells(path):
        if cell.get("cell_type") == "code":
            ids += CHECK_CALL_PATTERN.findall(cell_source(cell))
    return ids
