"""Reference runs: execute the instructor notebooks with ``check`` in record mode.

``segcourse references [--device cuda|cpu] [NOTEBOOK ...]`` runs every code cell of each
instructor notebook, in order, in a fresh Python process (plain ``exec``: no Jupyter needed, so
it also runs on a GPU machine that has only PyTorch). Every ``grading.check`` call then saves the
solution's outputs into ``autograder/references/<notebook>/`` and updates ``manifest.json``.

Cells tagged ``skip-reference`` (widget explorers, say) are skipped; IPython magics and shell
lines (``%...``, ``!...``) are dropped; ``display`` prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["course_dir", "notebook_code", "record_references", "find_notebooks", "check_ids_in_notebook"]

REPO = Path(__file__).resolve().parent.parent
SKIP_TAG = "skip-reference"


def course_dir() -> Path:
    """The nbgrader course folder: ``$SEGCOURSE_COURSE_DIR`` or the repository's ``autograder/``.

    Its parent holds ``notebooks/`` (nbgrader's source directory).
    """
    return Path(os.environ.get("SEGCOURSE_COURSE_DIR", REPO / "autograder")).resolve()


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


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def notebook_code(path: Path) -> str:
    """The notebook's code cells as one Python program (magics dropped, tagged cells skipped)."""
    chunks = []
    for index, cell in enumerate(_cells(path)):
        if cell.get("cell_type") != "code":
            continue
        if SKIP_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        lines = [line for line in _source(cell).splitlines()
                 if not line.lstrip().startswith(("%", "!"))]
        chunks.append(f"# --- cell {index} ---\n" + "\n".join(lines))
    return "\n\n".join(chunks) + "\n"


def check_ids_in_notebook(path: Path) -> list[str]:
    """Every check id that the notebook's cells pass to ``grading.check``."""
    from .grading import CHECK_CALL_PATTERN

    ids = []
    for cell in _cells(path):
        if cell.get("cell_type") == "code":
            ids += CHECK_CALL_PATTERN.findall(_source(cell))
    return ids


_PRELUDE = """\
import builtins, matplotlib
matplotlib.use("Agg")
try:
    from IPython.display import display
except ImportError:
    display = print
builtins.display = display
"""


def _forget(notebook: str, root: Path) -> None:
    """Drop a notebook's old references, so that renamed or removed checks leave no orphans."""
    from .grading import update_manifest

    if not root.exists():
        return
    update_manifest(root, lambda entries: [e for e in entries
                                           if not e["check"].startswith(notebook + ".")])
    for old in (root / notebook).glob("*.pt"):
        old.unlink()


def record_references(path: Path, device: str | None = None, out: Path | None = None) -> None:
    """Run one notebook in record mode, in a subprocess whose cwd is the notebook's folder."""
    env = dict(os.environ, SEGCOURSE_GRADING_MODE="record", MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1")
    env["SEGCOURSE_REFERENCES"] = str(out or course_dir() / "references")
    env.pop("SEGCOURSE_RESULTS_DIR", None)
    if device:
        env["SEGCOURSE_DEVICE"] = device
    _forget(path.stem, Path(env["SEGCOURSE_REFERENCES"]))
    program = _PRELUDE + notebook_code(path)
    print(f"== {path.stem}: recording references on {device or 'the default device'}")
    done = subprocess.run([sys.executable, "-c", program], cwd=path.parent, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{path.stem}: the reference run failed (exit {done.returncode})")
