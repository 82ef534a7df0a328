"""Record the notebooks' comparisons with longer budgets: the single source of data/experiments/.

    python scripts/record_experiments.py notebooks/02_fcn/02_fcn.ipynb --scale 8
    python scripts/record_experiments.py notebooks/06_deeplab/06_deeplab.ipynb --scale 8
    python scripts/record_experiments.py notebooks/06_deeplab/06_deeplab.ipynb --scale 8 \
        --only 06_deeplab.context128

A notebook's ``segcourse.experiments.compare(..., record="NAME")`` calls train for a few
seconds per run, so that the notebook stays within its 3-minute budget. This script runs the
same notebook, with the same code, in a Jupyter kernel up to its last recorded comparison, with
``SEGCOURSE_RECORD_EXPERIMENTS`` set: every recorded comparison then trains ``--scale`` times
longer, counts its budget in CPU seconds of the kernel (fair when other work shares the
machine) and writes ``data/experiments/NAME.json``, which the notebook shows next to its own
short runs (``segcourse.experiments.recorded``). With ``--only``, only the named comparisons are
recorded (the others run with the notebook's own budgets), and the notebook runs up to the last
cell that names one of them. Run it on a GPU to record GPU runs: the
records say which device, how many threads and which torch ran them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from segcourse.experiments import ONLY_ENV, RECORD_ENV, RECORDS, SCALE_ENV


def up_to_last_record(notebook: nbformat.NotebookNode, only: list[str] = ()) -> nbformat.NotebookNode:
    """The notebook's cells up to the last code cell that records a comparison (one of
    ``only``, when given)."""
    def records(source: str) -> bool:
        if only:
            return any(f'"{name}"' in source for name in only)
        return "record=" in source or "save_record(" in source

    last = max((i for i, cell in enumerate(notebook.cells)
                if cell.cell_type == "code" and records(cell.source)), default=None)
    if last is None:
        raise SystemExit(f"no cell records {', '.join(only)}" if only else
                         "no compare(..., record=...) or save_record call in this notebook: nothing to record")
    notebook.cells = notebook.cells[: last + 1]
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--scale", type=float, default=8.0,
                        help="multiply every recorded comparison's time budget (default 8)")
    parser.add_argument("--out", type=Path, default=RECORDS)
    parser.add_argument("--only", metavar="NAME[,NAME]", default="",
                        help="record only these comparisons (the others run with the notebook's budgets)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    notebook = up_to_last_record(nbformat.read(args.notebook, as_version=4), only)
    os.environ[RECORD_ENV] = str(args.out.resolve())
    os.environ[SCALE_ENV] = str(args.scale)
    os.environ[ONLY_ENV] = args.only
    os.environ["SEGCOURSE_RECORD_COMMAND"] = shlex.join(
        ["python", "scripts/record_experiments.py", *(argv if argv is not None else sys.argv[1:])])
    client = NotebookClient(notebook, timeout=None, kernel_name="python3",
                            resources={"metadata": {"path": str(args.notebook.parent)}})
    client.execute()
    print(f"recorded into {args.out}: " + ", ".join(sorted(p.name for p in args.out.glob("*.json"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
