"""The student workspace: the course's student versions in ``student/``, where students work.

``make student`` (``python -m segcourse.student``) makes the student version of every notebook
(``segcourse release``: solutions replaced by ``raise NotImplementedError()``, hidden tests
removed, the visible checks' references beside it) and copies it to ``student/NN_slug/``. The
instructor notebooks in ``notebooks/`` hold the solutions: a student never needs to open them.

A notebook already in the workspace is never overwritten (it holds the student's work); its
``references/`` folder is refreshed. To start a notebook afresh, delete (or rename) it and run
``make student`` again.

Self-learners can also grade their work with the hidden tests, without seeing them:
``make selfgrade NOTEBOOK=04_transposed_conv`` (``python -m segcourse.student --grade NOTEBOOK``)
runs ``segcourse grade`` on a copy of ``student/NOTEBOOK/NOTEBOOK.ipynb`` and prints the score.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .grader.course import REPO, course_dir, find_notebooks

__all__ = ["WORKSPACE", "prepare", "self_grade"]

WORKSPACE = REPO / "student"


def _stale(source: Path, released: Path) -> bool:
    """The release is missing or older than its instructor notebook or the references."""
    if not released.exists():
        return True
    manifest = course_dir() / "references" / "manifest.json"
    newest = max(source.stat().st_mtime, manifest.stat().st_mtime if manifest.exists() else 0)
    return newest > released.stat().st_mtime


def prepare(names: list[str] | None = None, workspace: Path = WORKSPACE) -> list[tuple[Path, str]]:
    """Release what is stale and fill ``workspace``; returns ``(notebook, what happened)`` pairs,
    what happened being ``"new"``, ``"kept"`` (the student's copy is left alone), ``"same"``
    or ``"failed"`` (nbgrader could not make its student version: the error is printed)."""
    sources = find_notebooks(names)
    if not sources:
        raise SystemExit(f"no notebooks named {names} in {course_dir().parent / 'notebooks'}")
    done = []
    for source in sources:
        released_dir = course_dir() / "release" / source.stem
        if _stale(source, released_dir / source.name):
            from .grader.autograde import release

            try:
                release([source.stem])
            except RuntimeError as error:  # one broken notebook must not stop the others
                print(f"could not make the student version of {source.stem}:\n"
                      f"{str(error)[-1500:]}", file=sys.stderr)
                done.append((workspace / source.stem / source.name, "failed"))
                continue
        target_dir = workspace / source.stem
        notebook, released = target_dir / source.name, released_dir / source.name
        existed = notebook.exists()
        target_dir.mkdir(parents=True, exist_ok=True)
        for item in sorted(released_dir.iterdir()):
            target = target_dir / item.name
            if item.name == "references":  # data, not work: always the current ones
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(item, target)
            elif not target.exists():
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
        if not existed:
            status = "new"
        else:
            status = "same" if notebook.read_bytes() == released.read_bytes() else "kept"
        done.append((notebook, status))
    return done


def self_grade(names: list[str] | None = None, workspace: Path = WORKSPACE) -> int:
    """Grade the workspace's notebooks (all, or the named ones) as the instructor would, hidden
    tests included, on copies (student id ``me``); prints the score table, returns the exit
    status of ``segcourse grade``."""
    notebooks = [workspace / name / f"{name}.ipynb" for name in names] if names else sorted(
        workspace.glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))
    missing = [str(n) for n in notebooks if not n.exists()]
    if missing or not notebooks:
        raise SystemExit(f"nothing to grade: {', '.join(missing) or workspace} (run make student)")
    with tempfile.TemporaryDirectory(prefix="segcourse-selfgrade-") as scratch:
        for notebook in notebooks:
            target = Path(scratch) / "me" / notebook.parent.name
            target.mkdir(parents=True)
            shutil.copy2(notebook, target / notebook.name)
        # your own code on your own machine: the sandbox is used when bubblewrap is there,
        # and is not needed when it is not
        from .grader.sandbox import sandbox_problem

        flags = ["--no-sandbox"] if sandbox_problem() else []
        return subprocess.call([sys.executable, "-m", "segcourse.cli", "grade", scratch, *flags])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segcourse.student",
        description="Make the student versions of the notebooks in student/ (never overwriting "
                    "a notebook that is already there).")
    parser.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    parser.add_argument("--workspace", type=Path, default=WORKSPACE)
    parser.add_argument("--grade", action="store_true",
                        help="grade your notebooks in the workspace, hidden tests included")
    args = parser.parse_args(argv)
    if args.grade:
        return self_grade(args.notebooks or None, args.workspace)
    done = prepare(args.notebooks or None, args.workspace)
    for notebook, status in done:
        note = {"kept": "yours, kept as it is", "new": "student version",
                "same": "student version, unchanged",
                "failed": "FAILED: no student version (see above)"}[status]
        print(f"  {notebook}  ({note})")
    print(f"\nWork in {args.workspace}/: the student versions (no solutions, no hidden tests); "
          "each visible test checks your function against a reference run, offline.\n"
          "A notebook there is never overwritten: delete it and run `make student` again "
          "to start it afresh.")
    return 1 if any(status == "failed" for _, status in done) else 0


if __name__ == "__main__":
    sys.exit(main())
