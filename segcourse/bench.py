"""``segcourse bench``: time notebooks and grading on this machine.

- ``segcourse bench [NOTEBOOK ...]`` executes each notebook and times it against the budget.
- ``segcourse bench --grading NOTEBOOK`` grades the instructor's solutions as one submission,
  in a throwaway copy of the course, once with the sandbox and once without, and prints the
  seconds of each and their ratio: what the sandbox costs per submission.
- ``segcourse bench --grading-batch NOTEBOOK --submissions 200 --workers 1,2`` makes a simulated
  batch (copies of the solution, blank copies and broken variants), grades the whole batch on a
  Dask LocalCluster of each number of workers (``segcourse grade --engine dask --force``), and
  prints submissions per minute, seconds and CPU seconds per submission, the speed-up over the
  first worker count, and the ratio to a plain execution (nbclient, no nbgrader, no sandbox) of
  a sample of the same notebooks. Not a test: its numbers depend on the machine and its load.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .grader.course import course_dir, find_notebooks

__all__ = ["time_notebook", "run_bench", "run_grading_bench", "run_batch_bench"]


def time_notebook(path, timeout: int = 600) -> tuple[float, float]:
    """Execute a notebook in a fresh kernel (outputs discarded); return ``(wall seconds, CPU
    seconds of the kernel)``. The CPU seconds (user + system, of the kernel process once it has
    exited) do not grow when other work shares the machine; the wall seconds do."""
    import resource

    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    client.execute()  # starts the kernel, runs every cell, shuts the kernel down and reaps it
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_bench(names: list[str] | None = None, budget: float = 180.0) -> int:
    """Print a table of notebook, wall seconds, CPU seconds of its kernel, budget and verdict
    (on the wall seconds: COURSE.md's budget is 3 minutes on 2 cores); non-zero if any is over
    budget. The load average is printed too: run it on an otherwise idle machine."""
    rows = []
    for path in find_notebooks(names):
        seconds, cpu = time_notebook(path)
        rows.append((path.stem, seconds, cpu))
        print(f"{path.stem:<24} {seconds:7.1f} s, {cpu:7.1f} CPU s", flush=True)
    total = sum(seconds for _, seconds, _ in rows)
    print(f"\n{'notebook':<24} {'seconds':>8} {'CPU s':>8} {'budget':>7}  verdict")
    for name, seconds, cpu in rows:
        verdict = "ok" if seconds <= budget else "OVER"
        print(f"{name:<24} {seconds:8.1f} {cpu:8.1f} {budget:7.0f}  {verdict}")
    print(f"{'total':<24} {total:8.1f} {sum(cpu for *_, cpu in rows):8.1f} {1200:7.0f}  "
          f"{'ok' if total <= 1200 else 'OVER'}")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if all(seconds <= budget for _, seconds, _ in rows) and total <= 1200 else 1


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


def _throwaway_course(root: Path, name: str) -> dict:
    """A copy of the course holding ``name`` only, released; returns its environment."""
    (source,) = find_notebooks([name])
    shutil.copytree(source.parent, root / "notebooks" / name)
    (root / "autograder").mkdir()
    shutil.copy(course_dir() / "nbgrader_config.py", root / "autograder")
    shutil.copytree(course_dir() / "references", root / "autograder" / "references")
    env = dict(os.environ, SEGCOURSE_COURSE_DIR=str(root / "autograder"),
               SEGCOURSE_REFERENCES=str(root / "autograder" / "references"))
    env.pop("SEGCOURSE_GRADEBOOK_URL", None)
    subprocess.run([sys.executable, "-m", "segcourse.cli", "release", name], env=env, check=True,
                   capture_output=True)
    return env


def _variants(release: dict, source: Path) -> list[tuple[str, dict]]:
    """The kinds of submission a batch is made of: solved, blank, and broken ones (the first
    exercise left unsolved; the last one with a syntax error)."""
    solved = _solved(json.loads(json.dumps(release)), source)
    first_unsolved = _solved(json.loads(json.dumps(release)), source)
    last_broken = _solved(json.loads(json.dumps(release)), source)
    solution_cells = [i for i, c in enumerate(release["cells"])
                      if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    if solution_cells:
        first_unsolved["cells"][solution_cells[0]]["source"] = \
            release["cells"][solution_cells[0]]["source"]
        last_broken["cells"][solution_cells[-1]]["source"] = "def broken(:\n    pass\n"
    return [("solved", solved), ("blank", release), ("first_unsolved", first_unsolved),
            ("syntax_error", last_broken)]


def _batch_kind(index: int) -> int:
    """70 % solved, 10 % each of the three others."""
    return {7: 1, 8: 2, 9: 3}.get(index % 10, 0)


def run_batch_bench(name: str, submissions: int = 200, workers: list[int] | None = None,
                    plain: int = 10, timeout: int | None = None) -> int:
    """Grade a simulated batch of ``submissions`` submissions of ``name`` on a Dask
    LocalCluster of each of ``workers`` workers; compare with plain execution of ``plain``
    of the same notebooks. Prints a table; non-zero if a submission was not graded."""
    import resource

    workers = workers or [1, 2]
    (source,) = find_notebooks([name])
    with tempfile.TemporaryDirectory(prefix="segcourse-batch-bench-") as tmp:
        root = Path(tmp)
        env = _throwaway_course(root, name)
        release_path = root / "autograder" / "release" / name / f"{name}.ipynb"
        release = json.loads(release_path.read_text())
        variants = _variants(release, source)
        inbox = root / "inbox"
        kinds = {}
        for index in range(submissions):
            student = f"s{index:04d}"
            kind, notebook = variants[_batch_kind(index)]
            kinds[student] = kind
            (inbox / student / name).mkdir(parents=True)
            (inbox / student / name / f"{name}.ipynb").write_text(json.dumps(notebook))
        print(f"{name}: {submissions} submissions "
              f"({', '.join(f'{sum(k == v for k in kinds.values())} {v}' for v, _ in variants)})",
              flush=True)

        # plain execution: the same notebooks in a kernel of this environment, no nbgrader,
        # no sandbox, one at a time, in their own folder (the release's files beside them)
        sample = sorted(kinds)[:plain]
        plain_seconds = []
        for student in sample:
            folder = root / "plain" / student
            shutil.copytree(release_path.parent, folder, ignore=shutil.ignore_patterns("*.ipynb"))
            shutil.copy(inbox / student / name / f"{name}.ipynb", folder / f"{name}.ipynb")
            import nbformat
            from nbclient import NotebookClient

            notebook = nbformat.read(folder / f"{name}.ipynb", as_version=4)
            client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                                    allow_errors=True, resources={"metadata": {"path": str(folder)}})
            start = time.perf_counter()
            client.execute()
            plain_seconds.append(time.perf_counter() - start)
        plain_each = sum(plain_seconds) / len(plain_seconds) if plain_seconds else None
        if plain_each:
            print(f"plain execution: {plain_each:.1f} s per notebook (mean of {len(sample)}, "
                  f"one at a time)", flush=True)

        results = []
        for count in workers:
            flags = ["--engine", "dask", "--jobs", str(count), "--force"]
            if timeout:
                flags += ["--timeout", str(timeout)]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "segcourse.cli", "grade", str(inbox),
                                   "--out", str(root / f"grades-{count}.csv"), *flags],
                                  env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rows = list(csv.DictReader((root / f"grades-{count}.csv").open())) \
                if done.returncode == 0 else []
            graded = sum(row["status"].startswith("ok") for row in rows)
            if done.returncode != 0 or len(rows) != submissions:
                print(done.stdout[-3000:], done.stderr[-3000:])
                return 1
            results.append((count, seconds, cpu, graded))
            print(f"{count} worker(s): {submissions} graded in {seconds:.0f} s "
                  f"({graded} ok), {cpu:.0f} CPU s", flush=True)
            scores = {}
            for row in rows:
                scores.setdefault(kinds[row["student"]], set()).add(row["score"])
            print("  scores by kind: " + ", ".join(f"{k} {sorted(v)}" for k, v in scores.items()),
                  flush=True)

    print(f"\n{'workers':>7} {'seconds':>8} {'subm/min':>9} {'s/subm':>7} {'CPU s/subm':>11} "
          f"{'speed-up':>9} {'vs plain':>9}")
    base = results[0][1]
    for count, seconds, cpu, _ in results:
        per = seconds / submissions
        ratio = f"{per * count / plain_each:9.2f}" if plain_each else f"{'n/a':>9}"
        print(f"{count:>7} {seconds:8.0f} {60 * submissions / seconds:9.1f} {per:7.2f} "
              f"{cpu / submissions:11.2f} {base / seconds:9.2f} {ratio}")
    if plain_each:
        print(f"\nplain execution {plain_each:.2f} s per notebook; 'vs plain' = worker-seconds "
              "per submission / plain seconds per notebook")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def run_grading_bench(name: str, runs: int = 1) -> int:
    """Grade the solutions of ``name`` with and without the sandbox; print seconds and ratio."""
    (source,) = find_notebooks([name])
    with tempfile.TemporaryDirectory(prefix="segcourse-bench-") as tmp:
        root = Path(tmp)
        env = _throwaway_course(root, name)
        segcourse = [sys.executable, "-m", "segcourse.cli"]
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
