"""The segcourse command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from segcourse import cli


def run(*args):
    return subprocess.run([sys.executable, "-m", "segcourse.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    done = run("--help")
    assert done.returncode == 0
    for command in ["doctor", "release", "grade", "references", "bench"]:
        assert command in done.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "segcourse"
    assert script.exists(), "pip install -e . should install the segcourse command"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0


def test_doctor_reports_everything_and_passes_here():
    done = run("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    for section in ["[python]", "[packages]", "[device]", "[jupyterlab]", "[data]", "[course]"]:
        assert section in done.stdout
    assert "torch" in done.stdout and "nbgrader" in done.stdout


def test_doctor_fails_and_says_how_to_fix_when_something_is_missing(monkeypatch, capsys):
    from segcourse import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "nbgrader" else real(d))
    assert doctor.run_doctor() == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "nbgrader" in out and "make setup" in out


def test_grade_refuses_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit, match="not a folder"):
        cli.main(["grade", str(tmp_path / "nope")])


def test_grade_refuses_an_empty_folder(tmp_path):
    with pytest.raises(SystemExit, match="no submissions"):
        cli.main(["grade", str(tmp_path)])


def test_references_refuses_an_unknown_notebook():
    with pytest.raises(SystemExit, match="unknown notebook"):
        cli.main(["references", "99_nothing"])


@pytest.mark.slow
def test_bench_times_a_notebook_and_prints_the_table():
    done = run("bench", "04_transposed_conv", "--budget", "600")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "04_transposed_conv" in done.stdout and "verdict" in done.stdout
    assert "ok" in done.stdout.splitlines()[-2]  # the notebook's row
