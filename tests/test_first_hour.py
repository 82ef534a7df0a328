"""The first hour, as a student and as an instructor (issue 12).

- Every route to a release gives the same release: plain ``nbgrader generate_assignment`` (what
  the Formgrader's Generate button runs) adds the visible references as ``segcourse release`` does.
- ``make student``'s workspace holds student versions only and never overwrites a student's work.
- The nbgrader exchange on one machine, end to end with two Unix student accounts and real
  nbgrader commands: release_assignment, fetch_assignment, submit, collect, autograde,
  generate_feedback, release_feedback, fetch_feedback.
- A time-budget stop closes the progress bar as a normal end, with a note.
- ``segcourse doctor`` says how to reach the commands without an activated environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
NAME = "04_transposed_conv"
BIN = Path(sys.executable).parent


def _solution_sources() -> dict[str, str]:
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook.cells
            if c.metadata.get("nbgrader", {}).get("solution")}


def _max_points() -> float:
    notebook = nbformat.read(REPO / "notebooks" / NAME / f"{NAME}.ipynb", as_version=4)
    return sum(float(c.metadata["nbgrader"]["points"]) for c in notebook.cells
               if c.metadata.get("nbgrader", {}).get("grade"))


def _make_course(root: Path) -> dict:
    """A copy of the course with one notebook, laid out as the repository; returns its env."""
    shutil.copytree(REPO / "notebooks" / NAME, root / "notebooks" / NAME)
    (root / "autograder").mkdir()
    shutil.copy(REPO / "autograder" / "nbgrader_config.py", root / "autograder")
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "autograder" / "references", root / "autograder" / "references")
    return dict(os.environ, SEGCOURSE_COURSE_DIR=str(root / "autograder"),
                SEGCOURSE_EXCHANGE=str(root / "exchange"),
                PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]))


def _run(command: list[str], cwd: Path, env: dict, prefix: tuple[str, ...] = ()):
    command = [*prefix, *command]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _visible_checks(notebook: Path) -> set[str]:
    from segcourse.grader.course import check_ids_in_notebook

    return set(check_ids_in_notebook(notebook))


# --------------------------------------------------------------------------------------------
# One release, whatever the route
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_plain_generate_assignment_makes_the_same_release_as_segcourse_release(tmp_path):
    env = _make_course(tmp_path)
    release = tmp_path / "autograder" / "release" / NAME
    # The Formgrader's Generate button: nbgrader's own command, from the course root.
    _run([str(BIN / "nbgrader"), "generate_assignment", NAME, "--force"], tmp_path, env)
    by_nbgrader = _digest(release)
    _run([sys.executable, "-m", "segcourse.cli", "release", NAME], tmp_path, env)
    by_segcourse = _digest(release)

    assert "references/manifest.json" in by_nbgrader, sorted(by_nbgrader)
    assert by_nbgrader == by_segcourse
    manifest = json.loads((release / "references" / "manifest.json").read_text())
    released = {entry["check"] for entry in manifest["references"]}
    assert released == _visible_checks(release / f"{NAME}.ipynb") != set()
    every = json.loads((tmp_path / "autograder/references/manifest.json").read_text())
    hidden = {e["check"] for e in every["references"] if e["check"].startswith(NAME)} - released
    assert hidden, "the hidden checks' references must stay with the instructor"


# --------------------------------------------------------------------------------------------
# The student workspace
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_student_workspace_has_no_solutions_and_keeps_the_students_work(tmp_path):
    env = _make_course(tmp_path / "course")
    workspace = tmp_path / "student"
    command = [sys.executable, "-m", "segcourse.student", NAME, "--workspace", str(workspace)]
    first = _run(command, tmp_path, env)
    notebook = workspace / NAME / f"{NAME}.ipynb"
    assert "student version" in first.stdout
    text = notebook.read_text()
    assert "NotImplementedError" in text
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    for source in _solution_sources().values():  # no solution body survives
        assert source.split('"""')[-1].strip() not in text
    assert (workspace / NAME / "references" / "manifest.json").exists()

    notebook.write_text(text.replace("raise NotImplementedError()", "return 42  # my try", 1))
    mine = notebook.read_bytes()
    shutil.rmtree(workspace / NAME / "references")
    second = _run(command, tmp_path, env)
    assert notebook.read_bytes() == mine, "make student overwrote the student's notebook"
    assert "yours, kept as it is" in second.stdout
    assert (workspace / NAME / "references" / "manifest.json").exists()


def test_selfgrade_says_what_is_missing(tmp_path):
    from segcourse.student import self_grade

    with pytest.raises(SystemExit, match="run make student"):
        self_grade([NAME], tmp_path)


# --------------------------------------------------------------------------------------------
# The exchange, with two student accounts
# --------------------------------------------------------------------------------------------


def _create_users(names: list[str]) -> list[str]:
    """Create Unix accounts (root only); returns the ones created, [] when that is not possible."""
    if os.geteuid() != 0 or not all(map(shutil.which, ("useradd", "userdel", "runuser"))):
        return []
    created = []
    for name in names:
        done = subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name],
                              capture_output=True, text=True)
        if done.returncode != 0:
            break
        created.append(name)
    return created


@pytest.fixture
def exchange_course():
    """A course, an exchange and two student homes under one folder every account can reach.

    As root, the two students are real Unix accounts and their nbgrader commands run as them.
    When the environment's Python is where other accounts cannot read it (pyenv under /root),
    they keep one capability, reading and searching any folder (as if Python were installed for
    everyone); writing still needs the exchange's own permissions. Without root, the commands run
    with each student's own HOME and nbgrader config, and the student id given explicitly.
    """
    suffix = f"{os.getpid() % 100000}"
    names = [f"sgcalice{suffix}", f"sgcbob{suffix}"]
    base = Path(tempfile.mkdtemp(prefix="segcourse-exchange-", dir="/tmp"))
    created = _create_users(names)
    try:
        base.chmod(0o755)
        course = base / "course"
        course.mkdir()
        env = _make_course(course)
        exchange = base / "exchange"
        exchange.mkdir()
        exchange.chmod(0o1777)  # what `make exchange` does
        env["SEGCOURSE_EXCHANGE"] = str(exchange)
        homes = {}
        for name in names:
            home = base / "home" / name
            (home / ".jupyter").mkdir(parents=True)
            (home / ".jupyter" / "nbgrader_config.py").write_text(
                f"c = get_config()\nc.Exchange.root = {str(exchange)!r}\n")
            if name in created:
                info = pwd.getpwnam(name)
                for path in (home, home / ".jupyter", home / ".jupyter" / "nbgrader_config.py"):
                    os.chown(path, info.pw_uid, info.pw_gid)
                home.chmod(0o700)
            homes[name] = home
        prefixes = {name: () for name in names}
        if len(created) == len(names):
            for ways in (_runuser, _setpriv):
                candidate = {name: ways(name) for name in names}
                probe = subprocess.run(
                    [*candidate[names[0]], sys.executable, "-c", "import nbgrader"],
                    capture_output=True, text=True,
                    env={"HOME": str(homes[names[0]]), "PATH": env["PATH"]})
                if probe.returncode == 0:
                    prefixes = candidate
                    break
        yield course, env, exchange, homes, created, prefixes
    finally:
        for user in created:
            subprocess.run(["userdel", "--force", user], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _runuser(name: str) -> tuple[str, ...]:
    return ("runuser", "-u", name, "--")


def _setpriv(name: str) -> tuple[str, ...]:
    return ("setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--")


def _student_env(user: str, home: Path, env: dict) -> dict:
    return {"HOME": str(home), "USER": user, "LOGNAME": user, "PATH": env["PATH"],
            "LANG": "C.UTF-8"}


SOLVE = """
import json, sys, nbformat
notebook = nbformat.read(sys.argv[1], as_version=4)
solutions = json.loads(sys.argv[2])
for cell in notebook.cells:
    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
    if grade_id in solutions:
        cell.source = solutions[grade_id]
nbformat.write(notebook, sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.xdist_group("exchange_e2e")
def test_exchange_round_trip_with_two_student_accounts(exchange_course):
    course, env, exchange, homes, accounts, prefixes = exchange_course
    as_user = any(prefixes.values())
    nbgrader = str(BIN / "nbgrader")
    alice, bob = homes

    def student(user, *command):
        home = homes[user]
        if not as_user and command[1] in ("submit", "fetch_feedback"):
            command += ("--student", user)  # nbgrader takes the id from the Unix account
        return _run(list(command), home, _student_env(user, home, env), prefixes[user])

    # Instructor: generate (the Formgrader's button) and release to the exchange.
    _run([nbgrader, "generate_assignment", NAME, "--force"], course, env)
    _run([nbgrader, "release_assignment", NAME, "--force"], course, env)
    outbound = exchange / "segcourse" / "outbound" / NAME
    assert (outbound / "references" / "manifest.json").exists(), \
        "release_assignment dropped the visible references"

    # Students: list, fetch, work (alice solves everything, bob submits the blank notebook), submit.
    for user, home in homes.items():
        listed = student(user, nbgrader, "list")
        assert NAME in listed.stdout + listed.stderr
        student(user, nbgrader, "fetch_assignment", NAME, "--course", "segcourse")
        fetched = home / NAME
        assert (fetched / "references" / "manifest.json").exists()
        assert "BEGIN SOLUTION" not in (fetched / f"{NAME}.ipynb").read_text()
        if user == alice:
            student(user, sys.executable, "-c", SOLVE, str(fetched / f"{NAME}.ipynb"),
                    json.dumps(_solution_sources()))
        student(user, nbgrader, "submit", NAME, "--course", "segcourse")
    inbound = exchange / "segcourse" / "inbound"
    assert sorted(p.name.split("+")[0] for p in inbound.iterdir()) == sorted(homes)
    if accounts:  # real Unix accounts: one student cannot see the others' submissions
        peek = subprocess.run(["runuser", "-u", bob, "--", "ls", str(inbound)],
                              capture_output=True, text=True)
        assert peek.returncode != 0, "a student could list the other students' submissions"

    # Instructor: collect, autograde (plain nbgrader), feedback.
    _run([nbgrader, "collect", NAME], course, env)
    for user in homes:
        assert (course / "autograder" / "submitted" / user / NAME / f"{NAME}.ipynb").exists()
    _run([nbgrader, "autograde", NAME, "--force"], course, env)
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'autograder' / 'gradebook.db'}") as gradebook:
        scores = {user: gradebook.find_submission(NAME, user).score for user in homes}
    assert scores == {alice: _max_points(), bob: 0.0}, scores
    _run([nbgrader, "generate_feedback", NAME, "--force"], course, env)
    _run([nbgrader, "release_feedback", NAME], course, env)

    # Students: each fetches their own feedback, and only theirs.
    for user, home in homes.items():
        student(user, nbgrader, "fetch_feedback", NAME, "--course", "segcourse")
        pages = list((home / NAME / "feedback").rglob(f"{NAME}.html"))
        assert len(pages) == 1, pages
        html = pages[0].read_text()
        expected = f"{NAME} (Score: {scores[user]:.1f} / {_max_points():.1f})"
        assert expected in html, (user, expected)
        if as_user:
            assert pages[0].stat().st_uid == pwd.getpwnam(user).pw_uid


# --------------------------------------------------------------------------------------------
# A time-budget stop is a normal end
# --------------------------------------------------------------------------------------------


def _loader():
    gen = torch.Generator().manual_seed(0)
    images, masks = torch.rand(16, 3, 4, 4, generator=gen), torch.randint(0, 2, (16, 4, 4),
                                                                           generator=gen)
    dataset = torch.utils.data.TensorDataset(images, masks)
    return torch.utils.data.DataLoader(dataset, batch_size=1)


class _Slow(torch.nn.Conv2d):
    def forward(self, x):
        time.sleep(0.01)
        return super().forward(x)


def test_a_time_budget_stop_closes_the_bar_full_with_a_note(monkeypatch, capsys):
    from tqdm.std import tqdm as std_tqdm

    import segcourse.train as train

    bars = []

    class Recording(std_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(train, "tqdm", Recording)
    history = train.fit(_Slow(3, 2, 1), _loader(), max_steps=10_000, time_budget=0.05,
                        device="cpu")
    (bar,) = bars
    steps = len(history.step)
    assert history.stopped_by == "time" and history.cut_by_time and steps < 10_000
    assert bar.n == bar.total == steps, "the bar would end red (unfinished) in a notebook"
    assert bar.desc == f"train (stopped by time budget after {steps} of 10000 steps)"
    note = history.budget_note()
    assert f"after {steps} of 10000 steps" in note and "0.05 s" in note
    assert capsys.readouterr().out == note + "\n", "fit prints the note under the bar"


def test_a_full_run_has_no_budget_note_and_keeps_its_bar():
    from segcourse.train import fit

    history = fit(torch.nn.Conv2d(3, 2, 1), _loader(), max_steps=5, time_budget=600,
                  device="cpu", progress=False)
    assert history.stopped_by == "steps" and history.planned_steps == 5
    assert not history.cut_by_time and history.budget_note() == ""
    only_time = fit(torch.nn.Conv2d(3, 2, 1), _loader(), time_budget=0.01, device="cpu",
                    progress=False)
    assert only_time.stopped_by == "time" and only_time.planned_steps is None
    assert not only_time.cut_by_time, "with no planned steps, nothing was cut"


def test_the_notebook_bar_of_a_budget_stop_ends_green():
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    import segcourse.train as train

    bars = []

    class Recording(notebook_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    original, train.tqdm = train.tqdm, Recording
    try:
        train.fit(_Slow(3, 2, 1), _loader(), max_steps=10_000, time_budget=0.05, device="cpu")
    finally:
        train.tqdm = original
    (bar,) = bars
    _, progress, _ = bar.container.children
    assert progress.bar_style == "success", progress.bar_style
    assert progress.value == progress.max == bar.n


# --------------------------------------------------------------------------------------------
# doctor without an activated environment
# --------------------------------------------------------------------------------------------


def test_doctor_says_how_to_run_the_commands_without_an_activated_venv(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(BIN / "segcourse"), "doctor"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a failure
    assert "segcourse, nbgrader, jupyter: activate the environment first" in done.stdout
    assert "source .venv/bin/activate" in done.stdout
