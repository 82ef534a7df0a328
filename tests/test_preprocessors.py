"""ScoreChecks re-verifies checks in the grader's process; stderr and execute_result are tamed."""

import nbformat
import pytest
import torch
import torch.nn.functional as F
from nbgrader.utils import determine_grade

from segcourse import grading
from segcourse.grader.preprocessors import ScoreChecks
from segcourse.grader.record import store_results

CASES = [dict(x=grading.randn(1, 2, 3, 3, seed=1), weight=grading.randn(2, 2, 3, 3, seed=2))]
SOURCE = 'grading.check("04_transposed_conv.pp", conv, cases=CASES)'


def conv(x, weight):
    return F.conv_transpose2d(x, weight)


@pytest.fixture
def refs(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGCOURSE_REFERENCES", str(tmp_path / "refs"))
    with monkeypatch.context() as patch:
        patch.setenv("SEGCOURSE_RESULTS_DIR", str(tmp_path / "recorded"))
        grading.check("04_transposed_conv.pp", conv, cases=CASES)
    store_results(tmp_path / "recorded", tmp_path / "refs")
    return tmp_path / "refs"


def graded_cell(outputs=()):
    cell = nbformat.v4.new_code_cell(SOURCE)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": 2,
                                 "grade_id": "test_conv", "schema_version": 3}
    cell.outputs = [nbformat.NotebookNode(o) for o in outputs]
    return cell


def score(cell, results_dir):
    notebook = nbformat.v4.new_notebook(cells=[cell])
    notebook, _ = ScoreChecks().preprocess(notebook, {"segcourse_results_dir": str(results_dir)})
    return determine_grade(notebook.cells[0])[0]


def save_results(results_dir, outputs, check="04_transposed_conv.pp"):
    results_dir.mkdir(exist_ok=True)
    torch.save({"check": check, "inputs_sha256": grading._fingerprint(CASES),
                "device": "cpu", "outputs": outputs},
               results_dir / "04_transposed_conv.pp.pt")


def test_correct_saved_outputs_earn_the_points(refs, tmp_path):
    save_results(tmp_path / "res", [conv(**CASES[0])])
    assert score(graded_cell(), tmp_path / "res") == 2


def test_wrong_outputs_fail_even_if_the_kernel_said_nothing(refs, tmp_path):
    """A kernel where every assertion was patched away prints no error; the grader still fails it."""
    save_results(tmp_path / "res", [torch.zeros(1, 2, 5, 5)])
    cell = graded_cell()
    assert score(cell, tmp_path / "res") == 0
    assert "CheckFailed" in cell.outputs[-1]["ename"]


def test_a_check_that_saved_nothing_fails(refs, tmp_path):
    assert score(graded_cell(), tmp_path / "nothing-here") == 0


def test_stderr_warnings_do_not_zero_a_test(refs, tmp_path):
    save_results(tmp_path / "res", [conv(**CASES[0])])
    warning = {"output_type": "stream", "name": "stderr", "text": "UserWarning: something\n"}
    cell = graded_cell([warning])
    assert score(cell, tmp_path / "res") == 2
    assert cell.outputs[0]["name"] == "stdout"


def test_execute_result_cannot_claim_partial_credit(refs, tmp_path):
    """nbgrader reads a numeric execute_result as partial credit: ScoreChecks removes it."""
    result = {"output_type": "execute_result", "execution_count": 1, "metadata": {},
              "data": {"text/plain": "1000"}}
    cell = graded_cell([result])
    assert score(cell, tmp_path / "nothing-here") == 0


def test_errors_from_the_kernel_stay_errors(refs, tmp_path):
    save_results(tmp_path / "res", [conv(**CASES[0])])
    error = {"output_type": "error", "ename": "AssertionError", "evalue": "x", "traceback": []}
    assert score(graded_cell([error]), tmp_path / "res") == 0


def test_saved_outputs_of_another_check_do_not_count(refs, tmp_path):
    save_results(tmp_path / "res", [conv(**CASES[0])], check="04_transposed_conv.other")
    assert score(graded_cell(), tmp_path / "res") == 0


def test_a_symlinked_or_garbage_results_file_fails_safely(refs, tmp_path):
    results = tmp_path / "res"
    results.mkdir()
    (results / "04_transposed_conv.pp.pt").symlink_to("/etc/passwd")
    assert score(graded_cell(), results) == 0
    (results / "04_transposed_conv.pp.pt").unlink()
    (results / "04_transposed_conv.pp.pt").write_bytes(b"not a torch file")
    cell = graded_cell()
    assert score(cell, results) == 0
    assert "could not read" in cell.outputs[-1]["evalue"]


def test_a_passing_check_says_the_grader_verified_it(refs, tmp_path):
    save_results(tmp_path / "res", [conv(**CASES[0])])
    cell = graded_cell()
    assert score(cell, tmp_path / "res") == 2
    assert "verified by the grader" in cell.outputs[-1]["text"]


def test_demo_cells_are_skipped_while_grading_but_graded_cells_never(tmp_path, monkeypatch):
    """SafeExecute leaves a ``demo`` cell unexecuted (source kept, outputs replaced by a note),
    runs the cells after it, and runs a graded cell even when it is tagged ``demo``."""
    import json

    from segcourse.grader.preprocessors import DEMO_NOTE, SafeExecute

    monkeypatch.setenv("SEGCOURSE_SANDBOX", "none")
    monkeypatch.setenv("SEGCOURSE_SCRATCH", str(tmp_path / "scratch"))
    demo = nbformat.v4.new_code_cell("raise RuntimeError('a demo cell ran while grading')")
    demo.metadata["tags"] = ["demo"]
    demo.outputs = [nbformat.NotebookNode(output_type="stream", name="stdout", text="old\n")]
    tagged_test = graded_cell()
    tagged_test.source = "print('the graded cell ran')"
    tagged_test.metadata["tags"] = ["demo"]
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"), demo, nbformat.v4.new_code_cell("print(x + 1)"),
        tagged_test])
    notebook, _ = SafeExecute(kernel_name="python3", timeout=120).preprocess(
        notebook, {"metadata": {"path": str(tmp_path)}})
    skipped, after, test = notebook.cells[1:]
    assert skipped.source == demo.source and skipped.execution_count is None
    assert [o.get("text") for o in skipped.outputs] == [DEMO_NOTE]
    assert after.outputs[0]["text"] == "2\n"
    assert test.outputs[0]["text"] == "the graded cell ran\n"
    report = json.loads((tmp_path / "scratch" / "report.json").read_text())
    assert report["demo_skipped"] == [1] and report["crashed"] == []
