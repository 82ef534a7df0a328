"""``segcourse doctor``: is this environment ready for the course?

Reports versions, the device, the JupyterLab extensions, the offline data and the course files,
and for everything missing the command that fixes it. ``run_doctor()`` returns the exit status:
non-zero when something the course needs is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Finding", "collect", "run_doctor"]

FIX_INSTALL = "make setup   (or: pip install -e '.[dev]')"
FIX_PATH = ("activate the environment first: source .venv/bin/activate   (or use the make "
            "targets, or type .venv/bin/segcourse, .venv/bin/nbgrader)")


@dataclass
class Finding:
    area: str
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _packages() -> list[Finding]:
    wanted = [
        ("torch", True), ("torchvision", True), ("numpy", True), ("scikit-image", True),
        ("scikit-learn", True), ("matplotlib", True), ("tqdm", True), ("PyMaxflow", True),
        ("ipywidgets", True), ("jupyterlab", True), ("nbgrader", True), ("nbval", False),
    ]
    findings = [Finding("python", "Python", sys.version_info >= (3, 10),
                        platform.python_version(), "use Python 3.10 or newer")]
    for dist, required in wanted:
        version = _version(dist)
        findings.append(Finding("packages", dist, version is not None, version or "missing",
                                FIX_INSTALL, required))
    return findings


def _device() -> list[Finding]:
    try:
        import torch

        from .runtime import device_name, get_device

        name = device_name(get_device())
        cuda = torch.version.cuda or "none"
        detail = f"{name} (torch {torch.__version__}, CUDA build {cuda}, {torch.get_num_threads()} threads)"
        return [Finding("device", "device", True, detail)]
    except Exception as error:  # a broken torch install is exactly what doctor must report
        return [Finding("device", "device", False, f"torch does not load: {error}", FIX_INSTALL)]


def _lab_extensions() -> list[Finding]:
    """Which JupyterLab extensions are installed and enabled (nbgrader, widgets)."""
    try:
        listing = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"],
                                 capture_output=True, text=True, timeout=60)
        text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)  # no colours
    except Exception as error:
        text = f"jupyter labextension list failed: {error}"
    findings = []
    for label, key in [("nbgrader", "@jupyter/nbgrader"),
                       ("widgets", "@jupyter-widgets/jupyterlab-manager")]:
        line = next((ln for ln in text.splitlines() if key in ln), "")
        enabled = bool(line) and "enabled" in line and "disabled" not in line
        findings.append(Finding(
            "jupyterlab", f"{label} extension", enabled,
            line.strip() or "not installed",
            f"jupyter labextension enable {key}" if line else FIX_INSTALL,
        ))
    return findings


def _data() -> list[Finding]:
    findings = []
    try:
        data = importlib.import_module("segcourse.data")
        for name, dataset_class in data.DATASETS.items():
            image, mask = dataset_class(1, size=32)[0]
            findings.append(Finding("data", name, True, f"image {tuple(image.shape)}, "
                                    f"{len(dataset_class.classes)} classes"))
        photos = data.load_photos(max_size=64)
        findings.append(Finding("data", "photos", True, ", ".join(sorted(photos))))
    except Exception as error:
        findings.append(Finding("data", "offline datasets", False,
                                f"{type(error).__name__}: {error}", FIX_INSTALL))
    return findings


def _commands() -> list[Finding]:
    """The course's commands typed in a terminal: found only with the environment activated."""
    here = Path(sys.executable).parent
    findings = []
    for command in ("segcourse", "nbgrader", "jupyter"):
        found = shutil.which(command)
        ok = found is not None and Path(found).parent.resolve() == here.resolve()
        detail = found or "not on PATH"
        if found and not ok:
            detail += f" (not this environment's: {here})"
        findings.append(Finding("commands", command, ok, detail, FIX_PATH, required=False))
    return findings


def _course() -> list[Finding]:
    from .grader.course import REPO, course_dir, find_notebooks
    from .grader.sandbox import sandbox_problem
    from .student import WORKSPACE
    from .verify import load_manifest

    notebooks = find_notebooks()
    references = load_manifest(course_dir() / "references")["references"]
    devices = sorted({entry["device"] for entry in references})
    students = sorted(WORKSPACE.glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))
    exchange = Path(os.environ.get("SEGCOURSE_EXCHANGE", course_dir() / "exchange"))
    exchange_ok = exchange.is_dir() and os.access(exchange, os.W_OK | os.X_OK)
    sandbox = sandbox_problem()
    return [
        Finding("course", "notebooks", bool(notebooks),
                f"{len(notebooks)} instructor notebooks in notebooks/ (with solutions)",
                "run from the course repository"),
        Finding("course", "references", bool(references),
                f"{len(references)} recorded on {', '.join(devices) or 'nothing'}",
                "segcourse references", required=False),
        Finding("course", "student versions", bool(students),
                f"{len(students)} in student/ (work there)" if students else "none yet",
                "make student", required=False),
        Finding("nbgrader", "Formgrader config", (REPO / "nbgrader_config.py").exists(),
                "nbgrader_config.py -> autograder/nbgrader_config.py",
                "restore nbgrader_config.py from git", required=False),
        Finding("nbgrader", "exchange", exchange_ok,
                f"{exchange} " + ("(writable)" if exchange_ok else "(missing or not writable)"),
                "make exchange   (instructors; students: nothing to do)", required=False),
        Finding("nbgrader", "grading sandbox", sandbox is None,
                sandbox or "bubblewrap works: each submission is graded in its own sandbox",
                "sudo apt-get install bubblewrap (instructors who autograde)", required=False),
    ]


def collect() -> list[Finding]:
    return _packages() + _device() + _commands() + _lab_extensions() + _data() + _course()


def run_doctor() -> int:
    findings = collect()
    width = max(len(f.name) for f in findings)
    print("segcourse doctor\n")
    for area in dict.fromkeys(f.area for f in findings):
        print(f"[{area}]")
        for f in (f for f in findings if f.area == area):
            mark = "ok " if f.ok else ("MISSING" if f.required else "warn")
            print(f"  {mark:<7} {f.name:<{width}}  {f.detail}")
    problems = [f for f in findings if not f.ok]
    if problems:
        print("\nTo fix:")
        fixes: dict[str, list[str]] = {}
        for f in problems:
            fixes.setdefault(f.fix, []).append(f.name)
        for fix, names in fixes.items():
            print(f"  - {', '.join(names)}: {fix}")
    needed = [f for f in problems if f.required]
    print("\n" + ("Everything the course needs is here." if not needed else
                  f"{len(needed)} thing(s) the course needs are missing."))
    return 1 if needed else 0
