"""``segcourse bench``: execute every notebook on this machine and time it against the budget."""

from __future__ import annotations

import time

from .grader.course import find_notebooks

__all__ = ["time_notebook", "run_bench"]


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
