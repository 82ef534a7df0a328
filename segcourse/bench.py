"""``segcourse bench``: time notebooks and grading on this machine.

- ``segcourse bench [NOTEBOOK ...]`` executes each notebook and times it against the budget.
- ``segcourse bench --grading NOTEBOOK`` grades the instructor's solutions as one submission,
  in a throwaway copy of the course, once with the sandbox and once without, and prints the
  seconds of each and their ratio: what the sandbox costs per submission.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .grader.course import course_dir, find_notebooks

__all__ = ["time_notebook", "run_bench", "run_grading_bench"]


def time_notebook(path, timeout: int = 600) -> float:
    """Execute a notebook in a fresh kernel (outputs discarded); return seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def run_bench(names: list[str] | None = None, budget: float = 180.0) -> int:
    """Print a table of notebook, seconds, budget, verdict; non-zero if any is over budget."""
    rows = []
    for path in find_notebooks(names):
        seconds = time_notebook(path)
        rows.append((path.stem, seconds))
        print(f"{path.stem:<24} {seconds:7.1f} s", flush=True)
    total = sum(seconds for _, seconds in rows)
    print(f"\n{'notebook':<24} {'seconds':>8} {'budget':>7}  verdict")
    for name, seconds in rows:
        verdict = "ok" if seconds <= budget else "OVER"
        print(f"{name:<24} {seconds:8.1f} {budget:7.0f}  {verdict}")
    print(f"{'total':<24} {total:8.1f} {1200:7.0f}  {'ok' if total <= 1200 else 'OVER'}")
    return 0 if all(seconds <= budget for _, seconds in rows) and total <= 1200 else 1


def _solved(release: dict, source: Path) -> dict:
    """The student release with the instructor's solution cells put back in."""
    solutions = {cell["metadata"]["nbgrader"]["grade_id"]: cell["source"]
                 for cell in json.loads(source.read_text())["cells"]
                 if cell.get("metadata", {}).get("nbgrader", {}).get("solution")}
    for cell in release["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in solutions:
            cell["source"] = solutions[grade_id]
    return release


def run_grading_bench(name: str, runs: int = 1) -> int:
    """Grade the solutions of ``name`` with and without the sandbox; print seconds and ratio."""
    (source,) = find_notebooks([name])
    with tempfile.TemporaryDirectory(prefix="segcourse-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(source.parent, root / "notebooks" / name)
        (root / "autograder").mkdir()
        shutil.copy(course_dir() / "nbgrader_config.py", root / "autograder")
        shutil.copytree(course_dir() / "references", root / "autograder" / "references")
        env = dict(os.environ, SEGCOURSE_COURSE_DIR=str(root / "autograder"),
                   SEGCOURSE_REFERENCES=str(root / "autograder" / "references"))
        segcourse = [sys.executable, "-m", "segcourse.cli"]
        subprocess.run(segcourse + ["release", name], env=env, check=True, capture_output=True)
        release = json.loads((root / "autograder" / "release" / name / f"{name}.ipynb").read_text())
        inbox = root / "inbox" / "solutions" / name
        inbox.mkdir(parents=True)
        (inbox / f"{name}.ipynb").write_text(json.dumps(_solved(release, source)))
        seconds = {}
        for mode, flags in [("sandbox", []), ("no sandbox", ["--no-sandbox"])]:
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                done = subprocess.run(segcourse + ["grade", str(root / "inbox"), *flags],
                                      env=env, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if done.returncode != 0 or " ok" not in done.stdout:
                    print(done.stdout[-2000:], done.stderr[-2000:])
                    return 1
            seconds[mode] = min(times)
            print(f"{name}: graded in {seconds[mode]:.1f} s ({mode}, best of {runs})", flush=True)
    ratio = seconds["sandbox"] / seconds["no sandbox"]
    print(f"\n{'notebook':<24} {'sandbox s':>10} {'no sandbox s':>13} {'ratio':>6}")
    print(f"{name:<24} {seconds['sandbox']:10.1f} {seconds['no sandbox']:13.1f} {ratio:6.2f}")
    return 0
