"""Reference runs: execute the instructor notebooks and keep their checks' outputs.

``segcourse references [--device cuda|cpu] [NOTEBOOK ...]`` runs every code cell of each
instructor notebook, in order, in a fresh Python process (plain ``exec``: no Jupyter needed, so
it also runs on a GPU machine that has only PyTorch), with ``SEGCOURSE_RESULTS_DIR`` pointing
at a temporary folder. Every ``grading.check`` saves the solution's outputs there, exactly as
it does for a student while autograding; this module then turns each saved output into a
reference file ``<references>/<notebook>/<name>.pt`` and a manifest entry (check id, file,
sha256, device, torch and CUDA versions, TF32 and determinism flags, seed, compare mode,
tolerance).

Cells tagged ``skip-reference`` (widget explorers, say) or ``demo`` are skipped; IPython magics
and shell lines (``%...``, ``!...``) are dropped; ``display`` prints.

Why ``demo`` cells are skipped here too: they hold no check (``tests/test_demo_cells.py``
enforces it) and the grader's kernel does not run them either (``SafeExecute``), so a reference
is recorded along the same path as the outputs it is compared with, and a reference run costs
the exercises, not the training runs. The full notebook, demo cells included, is still checked
against the same references by nbval (every check in feedback mode compares with them), and
``tests/test_demo_cells.py`` runs each notebook without its demo cells and verifies every check.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from ..verify import DEFAULT_TOLERANCE, MANIFEST, load_manifest, reference_path, sha256_of
from .course import cell_source, notebook_cells, references_root

__all__ = ["notebook_code", "record_references", "run_notebook_code", "store_results",
           "update_manifest", "SKIP_TAG", "DEMO_TAG", "RECORD_SKIP_TAGS"]

SKIP_TAG = "skip-reference"
#: A code cell that only demonstrates (a training run, an experiment, a figure, an explorer, a
#: timing) and that no graded cell depends on: skipped while autograding and in reference runs.
DEMO_TAG = "demo"
RECORD_SKIP_TAGS = (SKIP_TAG, DEMO_TAG)


def notebook_code(path: Path, skip_tags: tuple[str, ...] = RECORD_SKIP_TAGS) -> str:
    """The notebook's code cells as one Python program (magics dropped, cells carrying any of
    ``skip_tags`` skipped, except graded and solution cells tagged ``demo``: grading runs
    those too)."""
    chunks = []
    for index, cell in enumerate(notebook_cells(path)):
        if cell.get("cell_type") != "code":
            continue
        skip = set(skip_tags) & set(cell.get("metadata", {}).get("tags", []))
        nbgrader = cell.get("metadata", {}).get("nbgrader", {})
        graded = nbgrader.get("grade") or nbgrader.get("solution")
        if skip and not (graded and skip == {DEMO_TAG}):  # graded cells run, as in grading
            continue
        lines = [line for line in cell_source(cell).splitlines()
                 if not line.lstrip().startswith(("%", "!"))]
        chunks.append(f"# --- cell {index} ---\n" + "\n".join(lines))
    return "\n\n".join(chunks) + "\n"


_PRELUDE = """\
import builtins, matplotlib
matplotlib.use("Agg")
try:
    from IPython.display import display
except ImportError:
    display = print
builtins.display = display
"""


def _environment() -> dict:
    """What the reference run's process ran on (recorded in every manifest entry)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # grading.check runs every case with TF32 off, whatever the process's default
        "tf32_matmul": False,
        "tf32_cudnn": False,
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }


def store_results(results: Path, root: Path, notebook: str | None = None) -> list[str]:
    """Turn the outputs ``grading.check`` saved in ``results`` into references under ``root``.

    With ``notebook``, that notebook's old references are dropped first, so renamed or removed
    checks leave no orphans. Returns the check ids stored.
    """
    saved = sorted(Path(results).glob("*.pt"))
    entries = []
    for path in saved:
        payload = torch.load(path, weights_only=True)
        check_id = payload["check"]
        target = reference_path(check_id, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"check": check_id, "mode": payload["mode"],
                    "inputs_sha256": payload["inputs_sha256"], "outputs": payload["outputs"]},
                   target)
        device = payload["device"]
        entries.append({
            "check": check_id,
            "file": target.relative_to(root).as_posix(),
            "sha256": sha256_of(target),
            "device": device,
            **_environment(),
            "cuda": torch.version.cuda if device.startswith("cuda") else None,
            "seed": payload["seed"],
            "cases": len(payload["outputs"]),
            "compare": payload["mode"],
            "tolerance": {**DEFAULT_TOLERANCE, **payload["tolerance"]},
        })
        print(f"recorded {check_id}: {len(payload['outputs'])} case(s) on {device}")
    stored = {entry["check"] for entry in entries}

    def change(old: list[dict]) -> list[dict]:
        kept = [e for e in old if e["check"] not in stored
                and not (notebook and e["check"].startswith(notebook + "."))]
        return kept + entries

    if notebook:
        for old in (root / notebook).glob("*.pt"):
            if old.relative_to(root).as_posix() not in {e["file"] for e in entries}:
                old.unlink()
    update_manifest(root, change)
    return sorted(stored)


def update_manifest(root: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    """Replace the manifest's entries by ``change(entries)``, sorted by check id.

    Under a lock, because notebooks may be recorded concurrently, and written atomically, so
    that readers never see a half-written file.
    """
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".manifest.lock"):
        entries = sorted(change(load_manifest(root)["references"]), key=lambda e: e["check"])
        temporary = root / f".{MANIFEST}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps({"references": entries}, indent=1) + "\n")
        os.replace(temporary, root / MANIFEST)


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (POSIX), released on exit."""
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_notebook_code(path: Path, results: Path, device: str | None = None,
                      skip_tags: tuple[str, ...] = RECORD_SKIP_TAGS,
                      **run_kwargs) -> subprocess.CompletedProcess:
    """Run the notebook's code (``notebook_code``) in a fresh Python process whose cwd is the
    notebook's folder, with every ``grading.check`` saving its outputs into ``results``."""
    env = dict(os.environ, SEGCOURSE_RESULTS_DIR=str(results), MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1")
    if device:
        env["SEGCOURSE_DEVICE"] = device
    program = _PRELUDE + notebook_code(path, skip_tags)
    return subprocess.run([sys.executable, "-c", program], cwd=path.parent, env=env, **run_kwargs)


def record_references(path: Path, device: str | None = None, out: Path | None = None) -> list[str]:
    """Run one notebook's code (without its ``skip-reference`` and ``demo`` cells) and store
    every check's outputs as its reference. Returns the check ids recorded."""
    root = Path(out or references_root())
    with tempfile.TemporaryDirectory(prefix="segcourse-record-") as results:
        print(f"== {path.stem}: recording references on {device or 'the default device'}")
        done = run_notebook_code(path, Path(results), device)
        if done.returncode != 0:
            raise SystemExit(f"{path.stem}: the reference run failed (exit {done.returncode}); "
                             "the old references are kept")
        return store_results(Path(results), root, notebook=path.stem)
