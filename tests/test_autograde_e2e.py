"""End to end: real nbgrader grades honest, broken and hostile submissions of 04_transposed_conv.

One temporary course (a copy of the notebook, the config and the references) is released, the
submissions are built from the student version, and ``segcourse grade --jobs 2`` grades them
all in one batch, each kernel in its own bubblewrap sandbox. Each student's score says whether
grading held:

- solutions earn everything, a blank notebook nothing;
- an exception, an infinite loop or a kernel crash (``os._exit``) in one exercise costs that
  exercise's points only;
- patching the assertion helpers (and ``segcourse.grading`` itself) in the kernel gains nothing;
- huge outputs, deleted / duplicated / retyped / edited cells and an invalid file never break
  the batch, and no submitted file is changed;
- hostile submissions (``HOSTILE``: replaying references, running the instructor's source,
  forging saved outputs, writing the gradebook, other students' files, the CSV or the package,
  leaving processes behind, using the network, exhausting memory / processes / disk, ignoring
  interrupts, abusing the crash retry) earn no more than their real code earns, leave nothing
  running, change nothing outside the batch's autograded folder, and the honest submission in
  the same batch scores what it scores alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NAME = "04_transposed_conv"
FUNCTIONS = ["conv_matrix_1d", "conv_transpose1d", "conv_transpose2d", "transposed_output_size"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("autograde_e2e"),
    # the "vandal" submission duplicates a cell on purpose
    pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId"),
]

CHEAT = '''
import unittest, numpy.testing, torch, segcourse.grading as g
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
numpy.testing.assert_allclose = lambda *a, **k: None
numpy.testing.assert_array_equal = lambda *a, **k: None
unittest.TestCase.assertEqual = lambda *a, **k: None
g.compare = lambda *a, **k: None
g.verify = lambda *a, **k: (None, None)
g.check = lambda *a, **k: None
'''


def _solution_sources() -> dict[str, str]:
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _points() -> dict[str, float]:
    """grade_id -> points of every graded test cell in the instructor notebook."""
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: float(c.metadata["nbgrader"]["points"])
            for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade")}


def _points_of(function: str) -> float:
    return sum(p for gid, p in _points().items() if gid.split("_", 1)[1] == function)


def _solved(release: nbformat.NotebookNode, **replace: str) -> nbformat.NotebookNode:
    """The release notebook with every solution filled in (or replaced by ``replace[grade_id]``)."""
    notebook = nbformat.from_dict(json.loads(json.dumps(release)))  # deep copy
    solutions = _solution_sources()
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = replace.get(grade_id, solutions[grade_id])
    return notebook


def _index(notebook, grade_id: str) -> int:
    return next(i for i, c in enumerate(notebook.cells)
                if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _with_body(grade_id: str, statement: str) -> str:
    """The solution of ``grade_id`` whose function body starts with ``statement``."""
    source = _solution_sources()[grade_id]
    head, _, rest = source.partition('"""')
    doc, _, body = rest.partition('"""')
    return f'{head}"""{doc}"""\n    {statement}\n{body}'


def _students(release: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode | bytes]:
    students: dict[str, nbformat.NotebookNode | bytes] = {}
    students["perfect"] = _solved(release)
    students["blank"] = release
    students["exception"] = _solved(release, conv_transpose2d=_with_body(
        "conv_transpose2d", "raise ValueError('oops')"))
    students["infinite_loop"] = _solved(release, conv_transpose1d=_with_body(
        "conv_transpose1d", "while True: pass"))
    students["kernel_crash"] = _solved(release, transposed_output_size=(
        "import os\nos._exit(1)\n" + _solution_sources()["transposed_output_size"]))

    cheater = _solved(release, **{
        "conv_matrix_1d": "def conv_matrix_1d(kernel, in_len, stride=1, padding=0):\n"
                          "    return torch.zeros(in_len, in_len)\n",
        "conv_transpose1d": "def conv_transpose1d(x, kernel, stride=1, padding=0):\n"
                            "    return torch.zeros(3)\n",
        "conv_transpose2d": "def conv_transpose2d(x, weight, stride=1, padding=0, "
                            "output_padding=0, bias=None):\n    return x\n",
        "transposed_output_size": "def transposed_output_size(size, kernel, stride=1, padding=0, "
                                  "output_padding=0, dilation=1):\n    return 0\n",
    })
    cheater.cells.insert(1, nbformat.v4.new_code_cell(CHEAT))
    students["cheater"] = cheater

    huge = _solved(release)
    huge.cells.insert(1, nbformat.v4.new_code_cell(
        "for i in range(200_000):\n    print('spam', i)\nprint('x' * 5_000_000)"))
    students["huge_output"] = huge

    vandal = _solved(release)
    del vandal.cells[_index(vandal, "test_conv_matrix_1d")]          # deleted test cell
    vandal.cells[_index(vandal, "test_conv_transpose2d")].source = "pass"  # edited test cell
    vandal.cells[_index(vandal, "hidden_conv_transpose2d")].source = ""    # emptied test cell
    retyped = _index(vandal, "test_conv_transpose1d")
    vandal.cells[retyped] = nbformat.v4.new_markdown_cell(  # changed cell type
        vandal.cells[retyped].source, metadata=vandal.cells[retyped].metadata)
    duplicate = _index(vandal, "transposed_output_size")
    vandal.cells.insert(duplicate, nbformat.from_dict(json.loads(json.dumps(vandal.cells[duplicate]))))
    students["vandal"] = vandal

    students["invalid_file"] = b"this is not a notebook {"
    return students


# --------------------------------------------------------------------------------------------
# Hostile submissions: code a student could write to cheat or to hurt the grader. Each is a
# cell inserted after the setup cell of a notebook (PORT and CSV are filled in by the fixture).
# --------------------------------------------------------------------------------------------

LOCATE = """
import glob, os, segcourse
PACKAGE = os.path.dirname(segcourse.__file__)
COURSE_GUESSES = [os.path.join(PACKAGE, "..", "autograder"), os.environ.get("SEGCOURSE_COURSE_DIR", ""),
                  "..", "../..", "../../autograder", "/tmp", os.path.expanduser("~")]
"""

REPLAY = LOCATE + """
import torch
REFS = {}
for root in COURSE_GUESSES + [os.environ.get("SEGCOURSE_REFERENCES", ""), "references"]:
    for path in glob.glob(os.path.join(root, "**", "04_transposed_conv", "*.pt"), recursive=True):
        try:
            REFS.setdefault(os.path.basename(path)[:-3], torch.load(path, weights_only=True)["outputs"])
        except Exception:
            pass
print("references found:", sorted(REFS))
CALLS = {}
def replay(name):
    def fn(**kwargs):
        seq = REFS.get(name, []) + REFS.get(name + ".hidden", [])
        i = CALLS[name] = CALLS.get(name, -1) + 1
        return seq[i] if i < len(seq) else torch.zeros(1)
    return fn
"""
REPLAY_SOLUTIONS = {name: f"{name} = replay({name!r})\n" for name in FUNCTIONS}

INSTRUCTOR = LOCATE + """
import json
ran = 0
for root in COURSE_GUESSES:
    for path in glob.glob(os.path.join(root, "**", "04_transposed_conv.ipynb"), recursive=True):
        for cell in json.load(open(path))["cells"]:
            if "BEGIN SOLUTION" in "".join(cell["source"]):
                exec("".join(cell["source"]), globals())
                ran += 1
print("instructor solution cells run:", ran)
"""

FORGE_LAST = """
import os, torch, segcourse.grading as g
results = os.environ.get("SEGCOURSE_RESULTS_DIR", "/results")
for name in os.listdir(results) if os.path.isdir(results) else []:
    path = os.path.join(results, name)
    saved = torch.load(path, weights_only=True)
    saved["outputs"] = [torch.zeros(1) for _ in saved["outputs"]]   # forged, right fingerprint
    torch.save(saved, path)
try:
    os.symlink("/etc/passwd", os.path.join(results, "04_transposed_conv.conv_matrix_1d.hidden.pt"))
except OSError as error:
    print("symlink:", error)
"""

GRADEBOOK = LOCATE + """
import sqlite3
for root in COURSE_GUESSES:
    for path in glob.glob(os.path.join(root, "**", "gradebook.db"), recursive=True):
        try:
            db = sqlite3.connect(path)
            db.execute("update grade set manual_score = 100, extra_credit = 8")
            db.commit()
            print("wrote", path)
        except Exception as error:
            print("gradebook", path, error)
"""

OTHERS = LOCATE + """
for root in COURSE_GUESSES:
    for path in glob.glob(os.path.join(root, "**", "*.ipynb"), recursive=True) + \
                glob.glob(os.path.join(root, "**", "perfect", "**"), recursive=True):
        try:
            with open(path, "a") as handle:
                handle.write("vandalised")
            print("wrote", path)
        except Exception as error:
            pass
"""

LATER = """
import os, time
if os.fork() == 0:           # a grandchild, in its own session, outlives the kernel if it can
    os.setsid()
    if os.fork() == 0:
        time.sleep(8)
        for path in CSV_GUESSES:
            try:
                open(path, "w").write("student,assignment,score,max_score,status\\nlater,04_transposed_conv,99,13,ok\\n")
            except Exception:
                pass
        while True:
            pass
    os._exit(0)
"""

PACKAGE_WRITE = LOCATE + """
import torch
for path in [os.path.join(PACKAGE, "grading.py"), os.path.join(PACKAGE, "verify.py"),
             os.path.join(PACKAGE, "grader", "preprocessors.py"), torch.__file__]:
    try:
        with open(path, "a") as handle:
            handle.write("\\nraise SystemExit('owned')\\n")
        print("modified", path)
    except Exception as error:
        print("package", path, error)
"""

LEAVE = """
import subprocess, os
subprocess.Popen(["sleep", "600"], start_new_session=True)
subprocess.Popen(["python", "-c", "while True: pass"], start_new_session=True)
"""

NETWORK = """
import socket
for host in ["127.0.0.1", "localhost", "::1"]:
    try:
        with socket.create_connection((host, PORT), timeout=2) as connection:
            connection.sendall(b"hidden reference, please")
            print("connected to", host)
    except OSError as error:
        print("network", host, error)
"""

EXHAUST = """
import subprocess, sys
hog = subprocess.run([sys.executable, "-c", "x = []\\nwhile True:\\n    x.append(bytearray(2**30))"],
                     capture_output=True, text=True)
print("memory hog exited", hog.returncode, hog.stderr.strip().splitlines()[-1])
# children that exit at once stay zombies (never reaped), so they count until the bomb ends
bomb = subprocess.run([sys.executable, "-c", "import os\\nn = 0\\ntry:\\n    while True:\\n"
                       "        if os.fork() == 0:\\n            os._exit(0)\\n"
                       "        n += 1\\nexcept OSError as error:\\n    print('forks stopped at', n, error)"],
                      capture_output=True, text=True)
print(bomb.stdout.strip())
try:
    with open("big.bin", "wb") as handle:
        for _ in range(16):
            handle.write(b"x" * 2**24)
except OSError as error:
    print("disk stopped:", error)
"""

CRASH = "import os\nos._exit(1)\n"


def _hostile(release: nbformat.NotebookNode, port: int, csvs: list[str]) -> dict:
    def inserted(code: str, notebook=None, at: int = 1) -> nbformat.NotebookNode:
        notebook = nbformat.from_dict(json.loads(json.dumps(notebook if notebook is not None
                                                            else _solved(release))))
        code = code.replace("PORT", str(port)).replace("CSV_GUESSES", repr(csvs))
        notebook.cells.insert(at, nbformat.v4.new_code_cell(code))
        return notebook

    crashing = _solved(release, **{name: CRASH + _solution_sources()[name] for name in FUNCTIONS})
    # ipykernel restores its SIGINT handler around every cell, so a deaf kernel ignores
    # SIGINT right where it loops
    slow = _with_body("transposed_output_size", "import signal; signal.signal(signal.SIGINT, "
                      "signal.SIG_IGN)\n    while True:\n        pass")
    return {
        "replay": inserted(REPLAY, _solved(release, **REPLAY_SOLUTIONS)),
        "instructor": inserted(INSTRUCTOR, release),
        "forger": _forger(release),
        "gradebook": inserted(GRADEBOOK),
        "others": inserted(OTHERS),
        "csv_later": inserted(LATER),
        "package": inserted(PACKAGE_WRITE),
        "leaver": inserted(LEAVE),
        "network": inserted(NETWORK),
        "exhaust": inserted(EXHAUST),
        "deaf": _solved(release, transposed_output_size=slow),
        "crasher": crashing,
    }


def _forger(release: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Wrong answers everywhere, then a last cell that forges every saved output."""
    notebook = _solved(release, **{name: f"def {name}(*args, **kwargs):\n    return torch.zeros(1)\n"
                                   for name in FUNCTIONS})
    notebook.cells.append(nbformat.v4.new_code_cell(FORGE_LAST))
    return notebook


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` (byte code caches aside: other tests' imports
    write those into the package while the batch runs)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


class _Listener:
    """A loopback server on the grader's machine that counts who reaches it."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.5)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while self.running:
            try:
                connection, _ = self.server.accept()
                self.connections += 1
                connection.close()
            except OSError:
                pass

    def close(self):
        self.running = False
        self.thread.join()
        self.server.close()


def _sandbox_processes() -> list[int]:
    """Processes left running in sandboxes that no grader holds any more."""
    from segcourse.grader.sandbox import orphaned_processes

    return orphaned_processes()


def _grade(segcourse, submitted: Path, out: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(
        segcourse + ["grade", str(submitted), "--jobs", "2", "--out", str(out), "--timeout", "40",
                     "--force",  # the honest submission, graded alone first, is graded again
                     "--wall", "240", "--memory", "6", "--file-size", "64"],
        env=env, capture_output=True, text=True, timeout=2400,
    )
    return done, time.perf_counter() - start


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Release, build the submissions, grade them in one batch; returns (rows, course, ...)."""
    from segcourse.grader.sandbox import sandbox_problem

    if sandbox_problem():
        pytest.fail(f"the grading sandbox does not work here: {sandbox_problem()} "
                    "(make test installs bubblewrap)")
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(REPO / "notebooks" / NAME, root / "notebooks" / NAME)
    (root / "autograder").mkdir()
    shutil.copy(REPO / "autograder" / "nbgrader_config.py", root / "autograder")
    shutil.copytree(REPO / "autograder" / "references", root / "autograder" / "references")
    env = dict(os.environ, SEGCOURSE_COURSE_DIR=str(root / "autograder"),
               SEGCOURSE_REFERENCES=str(root / "autograder" / "references"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    segcourse = [sys.executable, "-m", "segcourse.cli"]

    done = subprocess.run(segcourse + ["release", NAME], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    release_path = root / "autograder" / "release" / NAME / f"{NAME}.ipynb"
    release = nbformat.read(release_path, as_version=4)

    # The honest submission alone first: its score and time are what the batch must match.
    alone = root / "alone"
    (alone / "perfect" / NAME).mkdir(parents=True)
    nbformat.write(_solved(release), alone / "perfect" / NAME / f"{NAME}.ipynb")
    done, alone_seconds = _grade(segcourse, alone, root / "alone.csv", env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    alone_row = next(csv.DictReader((root / "alone.csv").open()))

    out = root / "grades.csv"
    listener = _Listener()
    csv_guesses = [str(out), str(root / "grades.csv"), "../../grades.csv", "/tmp/grades.csv"]
    submitted = root / "inbox"
    students = _students(release) | _hostile(release, listener.port, csv_guesses)
    for student, notebook in students.items():
        folder = submitted / student / NAME
        folder.mkdir(parents=True)
        if isinstance(notebook, bytes):
            (folder / f"{NAME}.ipynb").write_bytes(notebook)
        else:
            nbformat.write(notebook, folder / f"{NAME}.ipynb")
    (submitted / "blank" / NAME / "timestamp.txt").write_text("2000-01-01 00:00:00.000000 UTC")
    before = _digest(submitted)
    protected = {"package": REPO / "segcourse", "references": root / "autograder" / "references",
                 "notebooks": root / "notebooks", "release": root / "autograder" / "release"}
    protected_before = {name: _digest(folder) for name, folder in protected.items()}

    done, batch_seconds = _grade(segcourse, submitted, out, env)
    listener.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    csv_after_run = out.read_bytes()
    time.sleep(10)  # longer than the csv_later student's delayed writer would wait
    rows = {r["student"]: r for r in csv.DictReader(out.open())}
    return {"rows": rows, "root": root, "env": env, "before": before, "submitted": submitted,
            "release": release_path, "table": done.stdout, "alone": alone_row,
            "alone_seconds": alone_seconds, "batch_seconds": batch_seconds,
            "listener": listener, "csv_after_run": csv_after_run, "csv": out,
            "leftovers": _sandbox_processes(), "protected": protected,
            "protected_before": protected_before, "count": len(students)}


def score(graded, student) -> float:
    return float(graded["rows"][student]["score"])


def max_score(graded) -> float:
    return float(graded["rows"]["perfect"]["max_score"])


def test_csv_has_one_row_per_submission_with_the_contract_columns(graded):
    assert set(graded["rows"]) == {"perfect", "blank", "exception", "infinite_loop",
                                   "kernel_crash", "cheater", "huge_output", "vandal",
                                   "invalid_file", "replay", "instructor", "forger", "gradebook",
                                   "others", "csv_later", "package", "leaver", "network",
                                   "exhaust", "deaf", "crasher"}
    row = graded["rows"]["perfect"]
    assert {"student", "assignment", "score", "max_score"} <= set(row)
    assert row["assignment"] == NAME
    assert max_score(graded) == sum(_points().values())
    assert "perfect" in graded["table"]  # the printed table


def test_solutions_earn_full_marks(graded):
    assert score(graded, "perfect") == max_score(graded)


def test_blank_notebook_earns_nothing(graded):
    assert score(graded, "blank") == 0


def test_a_submission_time_written_by_the_student_is_not_trusted(graded):
    assert "timestamp.txt ignored" in graded["rows"]["blank"]["status"]


@pytest.mark.parametrize("student,function", [
    ("exception", "conv_transpose2d"),
    ("infinite_loop", "conv_transpose1d"),
    ("kernel_crash", "transposed_output_size"),
])
def test_a_broken_exercise_costs_only_its_own_points(graded, student, function):
    assert score(graded, student) == max_score(graded) - _points_of(function), graded["rows"][student]


def test_kernel_crash_is_reported(graded):
    assert "crashed the kernel" in graded["rows"]["kernel_crash"]["status"]


def test_patching_assertions_and_grading_in_the_kernel_gains_nothing(graded):
    assert score(graded, "cheater") == 0


def test_huge_outputs_do_not_break_grading(graded):
    assert score(graded, "huge_output") == max_score(graded)


def test_vandalised_cells_cost_at_most_their_own_points(graded):
    """Edited, emptied and retyped test cells are restored from the source and graded; the
    duplicated solution cell is harmless; only the deleted test cell earns nothing."""
    lost = _points()["test_conv_matrix_1d"]
    assert score(graded, "vandal") == max_score(graded) - lost, graded["rows"]["vandal"]


def test_invalid_file_scores_zero_without_breaking_the_batch(graded):
    row = graded["rows"]["invalid_file"]
    assert float(row["score"]) == 0 and row["status"].startswith("error")


def test_no_submitted_file_was_changed(graded):
    assert _digest(graded["submitted"]) == graded["before"]


def test_release_has_no_solutions_no_hidden_tests_and_only_visible_references(graded):
    text = graded["release"].read_text()
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
    assert f'"{NAME}.' in text and ".hidden\\\"" not in text
    for source in _solution_sources().values():
        body = source.split("### BEGIN SOLUTION")[-1].split("### END SOLUTION")[0].strip()
        assert body.splitlines()[0] not in text
    manifest = json.loads((graded["release"].parent / "references" / "manifest.json").read_text())
    checks = {entry["check"] for entry in manifest["references"]}
    assert checks and not any(check.endswith(".hidden") for check in checks)


def test_feedback_and_export_work_on_the_gradebook(graded):
    course = graded["root"] / "autograder"
    env = dict(graded["env"], SEGCOURSE_SUBMITTED_DIR=str(graded["submitted"]))
    nbgrader = [sys.executable, "-m", "nbgrader"]
    done = subprocess.run(nbgrader + ["generate_feedback", NAME, "--student", "perfect"],
                          cwd=course, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (course / "feedback" / "perfect" / NAME / f"{NAME}.html").exists()
    done = subprocess.run(nbgrader + ["export", "--to", "grades_export.csv"],
                          cwd=course, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "perfect" in (course / "grades_export.csv").read_text()


def test_validation_through_the_python_api(graded):
    """`nbgrader validate` exits 0 even when tests fail, so use its Python API: the solutions
    validate clean, and the released (blank) student version reports failing tests."""
    from nbgrader.validator import Validator

    validator = Validator()
    solved = validator.validate(str(REPO / "notebooks" / NAME / f"{NAME}.ipynb"))
    assert not solved.get("failed") and not solved.get("changed"), solved
    blank = validator.validate(str(graded["release"]))
    assert blank.get("failed"), "a blank student notebook must fail validation"
    visible = [grade_id for grade_id in _points() if grade_id.startswith("test_")]
    assert len(blank["failed"]) == len(visible)  # hidden tests are not in the release
    assert all("ot implemented" in str(failure) or "NotImplementedError" in str(failure)
               for failure in blank["failed"])


# --------------------------------------------------------------------------------------------
# What the hostile submissions got
# --------------------------------------------------------------------------------------------


def _points_before(function: str) -> float:
    """Points of the test cells above the first test cell of ``function``."""
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    total = 0.0
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade_id") == f"test_{function}":
            return total
        if meta.get("grade"):
            total += float(meta["points"])
    raise AssertionError(function)


@pytest.mark.parametrize("student", ["replay", "instructor", "forger", "crasher"])
def test_cheats_without_an_implementation_earn_nothing(graded, student):
    """No reference, no instructor notebook is visible in the sandbox; forged outputs are
    compared like any others; crashing every cell earns nothing either."""
    assert score(graded, student) == 0, graded["rows"][student]


@pytest.mark.parametrize("student", ["gradebook", "others", "csv_later", "package", "leaver",
                                     "network", "exhaust"])
def test_attacks_on_the_grader_earn_only_what_the_real_code_earns(graded, student):
    """These carry correct solutions: they earn full marks, nothing more, and are not flagged."""
    row = graded["rows"][student]
    assert score(graded, student) == max_score(graded), row
    assert row["status"] == "ok", row


def test_exhaustion_was_stopped_by_the_limits(graded):
    notebook = graded["root"] / "autograder" / "autograded" / "exhaust" / NAME / f"{NAME}.ipynb"
    printed = "".join(o.get("text", "") for o in nbformat.read(notebook, 4).cells[1].outputs)
    assert "MemoryError" in printed and "forks stopped at" in printed, printed
    assert "disk stopped: [Errno 27] File too large" in printed, printed


def test_an_interrupt_ignoring_kernel_loses_only_the_cells_from_there_on(graded):
    row = graded["rows"]["deaf"]
    assert score(graded, "deaf") == _points_before("transposed_output_size"), row


def test_the_honest_submission_scores_as_it_does_alone(graded):
    assert graded["rows"]["perfect"]["score"] == graded["alone"]["score"] == str(int(max_score(graded)))
    assert graded["rows"]["perfect"]["status"] == graded["alone"]["status"] == "ok"


def test_the_gradebook_was_not_written_from_a_kernel(graded):
    from nbgrader.api import Gradebook

    url = f"sqlite:///{graded['root'] / 'autograder' / 'gradebook.db'}"
    with Gradebook(url) as gradebook:
        for student in graded["rows"]:
            try:
                submission = gradebook.find_submission(NAME, student)
            except Exception:
                continue
            for notebook in submission.notebooks:
                assert all(g.manual_score is None and not g.extra_credit for g in notebook.grades)


def test_nothing_is_left_running(graded):
    assert graded["leftovers"] == []


def test_the_network_was_not_reachable(graded):
    assert graded["listener"].connections == 0


def test_the_csv_is_what_the_run_wrote(graded):
    assert graded["csv"].read_bytes() == graded["csv_after_run"]
    assert b"later,04_transposed_conv,99" not in graded["csv_after_run"]


def test_nothing_outside_the_autograded_folder_changed(graded):
    for name, folder in graded["protected"].items():
        assert _digest(folder) == graded["protected_before"][name], name
    scratch = graded["root"] / "autograder" / ".grading"
    leftovers = [p.name for p in scratch.iterdir() if p.name != ".lock"]
    assert leftovers == [], leftovers


def test_the_batch_takes_a_small_multiple_of_the_honest_run(graded):
    """Hostile submissions cannot multiply the grading time: the batch of all of them, two at
    a time, stays within a small multiple of one honest submission per submission."""
    per_submission = graded["batch_seconds"] / graded["count"]
    assert per_submission < 3 * graded["alone_seconds"], (per_submission, graded["alone_seconds"])


def test_a_manual_score_that_no_instructor_gave_is_flagged(graded, tmp_path):
    """Audit: extra credit in the gradebook (written here as an attacker with file access
    would) makes the row say REVIEW, never plain "ok"."""
    import sqlite3

    from nbgrader.api import Gradebook

    database = tmp_path / "gradebook.db"
    shutil.copy(graded["root"] / "autograder" / "gradebook.db", database)
    with sqlite3.connect(database) as db:
        db.execute("update grade set extra_credit = 8 where id in (select grade.id from grade "
                   "join submitted_notebook on grade.notebook_id = submitted_notebook.id "
                   "join submitted_assignment on submitted_notebook.assignment_id = "
                   "submitted_assignment.id join student on submitted_assignment.student_id = "
                   "student.id where student.id = 'perfect' limit 1)")
    from segcourse.grader import autograde

    with Gradebook(f"sqlite:///{database}") as gradebook:
        score_, flags = autograde._audit(gradebook, "perfect", NAME, "ok")
    assert score_ > max_score(graded) and any("REVIEW" in flag for flag in flags)
    assert any("above the maximum" in flag for flag in flags)
