"""The ``segcourse`` command line (COURSE.md section 7)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _doctor(args) -> int:
    from .doctor import run_doctor

    return run_doctor()


def _release(args) -> int:
    from .grader.autograde import release

    for notebook in release(args.assignments or None):
        print(f"released {notebook}")
    return 0


def _grade(args) -> int:
    from .grader.autograde import format_table, grade, write_csv
    from .grader.sandbox import Limits

    limits = Limits(memory=int(args.memory * 2**30), processes=args.processes,
                    file_size=int(args.file_size * 2**20), disk=int(args.disk * 2**30),
                    cpu=args.cpu, wall=args.wall)
    options = {}
    for item in args.cluster_option or []:
        key, _, value = item.partition("=")
        if not key or not _:
            raise SystemExit(f"--cluster-option wants KEY=VALUE, got {item!r}")
        options[key] = _option_value(value)
    summary: dict = {}
    try:
        rows = grade(args.submitted, jobs=args.jobs, timeout=args.timeout,
                     sandbox=not args.no_sandbox, limits=limits, engine=args.engine,
                     scheduler=args.scheduler, db=args.db, force=args.force,
                     cluster_options=options, summary=summary)
    except KeyboardInterrupt:
        print("segcourse grade: interrupted; every sandbox was stopped and its scratch removed "
              "(grades written so far are in the gradebook; run the same command again to "
              "grade the rest)", file=sys.stderr)
        return 130
    print(format_table(rows))
    print(f"\n{summary.get('graded', 0)} graded, {summary.get('unchanged', 0)} unchanged and "
          "already graded (not graded again; --force regrades them)"
          + (f", on {summary['engine']} with {summary['workers']} worker(s)"
             if summary.get("engine") else "")
          + f", in {summary.get('seconds', 0):.0f} s")
    if args.out:
        write_csv(rows, args.out)
        print(f"wrote {args.out}")
    return 0


def _option_value(text: str):
    """--cluster-option values: numbers and JSON (lists, dicts) as such, else the string."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _references(args) -> int:
    from .grader.course import find_notebooks
    from .grader.record import record_references

    for notebook in find_notebooks(args.assignments or None):
        record_references(notebook, device=args.device)
    return 0


def _bench(args) -> int:
    from .bench import run_bench, run_grading_bench

    if args.grading_batch:
        from .bench import run_batch_bench

        workers = [int(w) for w in args.workers.split(",") if w.strip()]
        return run_batch_bench(args.grading_batch, submissions=args.submissions,
                               workers=workers, plain=args.plain)
    if args.grading:
        return run_grading_bench(args.grading, runs=args.runs)
    return run_bench(args.notebooks or None, budget=args.budget)


def _limit_defaults():
    from .grader.sandbox import Limits

    return Limits()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segcourse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="environment report; non-zero if something is missing")
    doctor.set_defaults(run=_doctor)

    release = commands.add_parser("release", help="student versions into autograder/release/")
    release.add_argument("assignments", nargs="*", metavar="ASSIGNMENT")
    release.set_defaults(run=_release)

    grade = commands.add_parser("grade", help="autograde SUBMITTED_DIR/STUDENT/ASSIGNMENT/*.ipynb")
    grade.add_argument("submitted", metavar="SUBMITTED_DIR")
    grade.add_argument("--jobs", type=int, default=1,
                       help="submissions graded in parallel (with --engine dask/slurm/kubernetes: "
                            "the number of workers)")
    grade.add_argument("--engine", choices=["local", "dask", "slurm", "kubernetes"],
                       default="local",
                       help="local: processes on this machine (default); dask: a Dask LocalCluster "
                            "of --jobs workers; slurm / kubernetes: a Dask cluster of --jobs "
                            "workers through dask-jobqueue / the dask-kubernetes operator")
    grade.add_argument("--scheduler", metavar="ADDRESS",
                       help="grade on the running Dask cluster at ADDRESS (tcp://host:8786)")
    grade.add_argument("--cluster-option", action="append", metavar="KEY=VALUE",
                       help="passed to the cluster (SLURMCluster / KubeCluster), e.g. "
                            "queue=cpu, walltime=02:00:00, image=registry/segcourse:1")
    grade.add_argument("--db", metavar="URL",
                       help="the gradebook: sqlite:///file.db or postgresql://user@host/db "
                            "(default $SEGCOURSE_GRADEBOOK_URL or autograder/gradebook.db)")
    grade.add_argument("--force", action="store_true",
                       help="grade again submissions already graded and unchanged")
    grade.add_argument("--out", help="write a CSV (student, assignment, score, max_score, status)")
    grade.add_argument("--timeout", type=int, default=None,
                       help="seconds per cell before it is interrupted (default 600)")
    defaults = _limit_defaults()
    grade.add_argument("--no-sandbox", action="store_true",
                       help="run kernels with your own rights (no bubblewrap); rows say so")
    grade.add_argument("--wall", type=int, default=defaults.wall,
                       help="seconds for a whole notebook, crash retries included (default %(default)s)")
    grade.add_argument("--memory", type=float, default=defaults.memory / 2**30,
                       help="GiB of address space per process in the sandbox (default %(default)g)")
    grade.add_argument("--processes", type=int, default=defaults.processes,
                       help="processes and threads per sandbox (default %(default)s)")
    grade.add_argument("--file-size", type=float, default=defaults.file_size / 2**20,
                       help="MiB, the largest file a sandbox may write (default %(default)g)")
    grade.add_argument("--disk", type=float, default=defaults.disk / 2**30,
                       help="GiB a sandbox may write in all (default %(default)g)")
    grade.add_argument("--cpu", type=int, default=defaults.cpu,
                       help="CPU seconds per process in the sandbox (default %(default)s)")
    grade.set_defaults(run=_grade)

    references = commands.add_parser("references", help="record reference runs")
    references.add_argument("--device", choices=["cuda", "cpu"], default=None)
    references.add_argument("assignments", nargs="*", metavar="ASSIGNMENT")
    references.set_defaults(run=_references)

    bench = commands.add_parser("bench", help="time every notebook on this machine")
    bench.add_argument("notebooks", nargs="*", metavar="NOTEBOOK")
    bench.add_argument("--budget", type=float, default=180.0, help="seconds allowed per notebook")
    bench.add_argument("--grading", metavar="NOTEBOOK",
                       help="time grading NOTEBOOK's solutions with and without the sandbox")
    bench.add_argument("--runs", type=int, default=1, help="with --grading: best of this many")
    bench.add_argument("--grading-batch", metavar="NOTEBOOK",
                       help="grade a simulated batch of NOTEBOOK on a Dask LocalCluster: "
                            "submissions per minute, speed-up, ratio to plain execution")
    bench.add_argument("--submissions", type=int, default=200,
                       help="with --grading-batch: batch size (default %(default)s)")
    bench.add_argument("--workers", default="1,2",
                       help="with --grading-batch: worker counts to compare (default %(default)s)")
    bench.add_argument("--plain", type=int, default=10,
                       help="with --grading-batch: notebooks executed plainly for the ratio "
                            "(default %(default)s)")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
