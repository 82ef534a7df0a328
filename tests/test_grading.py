"""The check API: recording, comparing, device-aware tolerance, tamper resistance."""

import json

import pytest
import torch
import torch.nn.functional as F

from segcourse import grading
from segcourse.grader.record import store_results
from segcourse.grading import CheckFailed, ReferenceMissing
from segcourse.verify import Tolerance, compare, tolerance_for, verify

TIGHT = Tolerance(1e-4, 1e-5)

CASES = [dict(x=grading.randn(1, 2, 3, 4, seed=1), weight=grading.randn(2, 3, 3, 3, seed=2), stride=2)]


def reference_fn(x, weight, stride):
    return F.conv_transpose2d(x, weight, stride=stride)


def record(check_id, fn, cases, root, monkeypatch, **options):
    """What a reference run does: the check saves its outputs, the recorder stores them."""
    with monkeypatch.context() as patch:
        patch.setenv("SEGCOURSE_RESULTS_DIR", str(root.parent / "record-results"))
        grading.check(check_id, fn, cases=cases, **options)
    store_results(root.parent / "record-results", root)


@pytest.fixture
def refs(tmp_path, monkeypatch):
    """An empty references folder, with the reference of CASES recorded into it."""
    root = tmp_path / "refs"
    monkeypatch.setenv("SEGCOURSE_REFERENCES", str(root))
    record("04_transposed_conv.example", reference_fn, CASES, root, monkeypatch)
    return root


# --- compare: a table of (got, expected, mode, expected fragment of the message or None) ---

T = torch.tensor
COMPARE_TABLE = [
    ("equal floats", T([1.0, 2.0]), T([1.0, 2.0]), "close", None),
    ("round-off", T([1.0, 2.0 + 1e-6]), T([1.0, 2.0]), "close", None),
    ("wrong value", T([1.0, 2.5]), T([1.0, 2.0]), "close", "index (1,)"),
    ("wrong shape", T([1.0, 2.0, 3.0]), T([1.0, 2.0]), "close", "expected shape (2,)"),
    ("wrong dtype", T([1.0, 2.0]).double(), T([1.0, 2.0]), "close", "expected dtype torch.float32"),
    ("ints exact", T([1, 2]), T([1, 2]), "exact", None),
    ("ints differ", T([1, 3]), T([1, 2]), "exact", "1 of 2 elements differ"),
    ("partition relabelled", T([1, 1, 0, 2]), T([0, 0, 2, 1]), "partition", None),
    ("partition merged", T([0, 0, 0, 1]), T([0, 0, 2, 1]), "partition", "partition differs"),
    ("sign flipped", T([-1.0, 2.0]), T([1.0, -2.0]), "sign", None),
    ("sign not enough", T([1.0, 2.0]), T([1.0, -2.0]), "sign", "differ"),
    ("nested ok", [T([1.0]), {"a": 3}], [T([1.0]), {"a": 3}], "close", None),
    ("nested key", [T([1.0]), {"b": 3}], [T([1.0]), {"a": 3}], "close", "expected keys ['a']"),
    ("not a tensor", 3.0, T([3.0]), "close", "expected a tensor"),
    ("int exact", 5, 5, "exact", None),
    ("float for int", 5.0, 5, "exact", "expected int 5, got float 5.0"),
    ("scalar close", 2.0000001, 2.0, "close", None),
    ("scalar off", 2.1, 2.0, "close", "expected 2"),
    ("nan matches nan", T([float("nan"), 1.0]), T([float("nan"), 1.0]), "close", None),
    ("nan mismatch", T([float("nan"), 1.0]), T([0.0, 1.0]), "close", "NaN"),
]


@pytest.mark.parametrize("name,got,expected,mode,fragment", COMPARE_TABLE, ids=[r[0] for r in COMPARE_TABLE])
def test_compare_table(name, got, expected, mode, fragment):
    problem = compare(got, expected, mode, TIGHT)
    if fragment is None:
        assert problem is None, problem
    else:
        assert problem is not None and fragment in problem, problem


def test_tolerance_depends_on_devices():
    assert tolerance_for("cpu", "cpu") == Tolerance(1e-4, 1e-5)
    assert tolerance_for("cuda:0 (NVIDIA H100)", "cuda:1 (NVIDIA H100)") == Tolerance(1e-4, 1e-5)
    assert tolerance_for("cuda:0 (NVIDIA H100)", "cuda:0 (NVIDIA H200)") == Tolerance(1e-2, 1e-3)
    assert tolerance_for("cuda:0 (NVIDIA H100)", "cpu") == Tolerance(1e-2, 1e-3)
    assert tolerance_for("cpu", "cpu", {"rtol": 0.5}).rtol == 0.5


def test_tf32_like_noise_passes_across_devices_but_a_real_mistake_does_not():
    torch.manual_seed(0)
    x, w = torch.randn(2, 8, 9, 9), torch.randn(8, 4, 3, 3)
    exact = F.conv_transpose2d(x, w, stride=2)
    # TF32 keeps ~10 mantissa bits: a relative error of about 1e-3 per element
    tf32_like = exact * (1 + 1e-3 * torch.randn_like(exact).clamp(-2, 2))
    flipped = F.conv_transpose2d(x, w.flip(-1, -2), stride=2)
    cross = tolerance_for("cuda:0 (NVIDIA H100)", "cpu")
    assert compare(tf32_like, exact, "close", cross) is None
    assert compare(tf32_like, exact, "close", TIGHT) is not None  # same device: tight
    assert compare(flipped, exact, "close", cross) is not None


def test_record_then_check_round_trip(refs, capsys):
    manifest = json.loads((refs / "manifest.json").read_text())
    (entry,) = manifest["references"]
    assert entry["check"] == "04_transposed_conv.example"
    assert entry["file"] == "04_transposed_conv/example.pt"
    assert entry["device"] == "cpu" and entry["cuda"] is None and entry["seed"] == 0
    assert set(entry["tolerance"]) >= {"rtol", "atol", "cross_device_rtol", "cross_device_atol"}
    grading.check("04_transposed_conv.example", reference_fn, cases=CASES)
    assert "\u2714 04_transposed_conv.example" in capsys.readouterr().out


def test_failure_message_names_case_index_and_values(refs):
    flipped = lambda x, weight, stride: F.conv_transpose2d(x, weight.flip(-1, -2), stride=stride)
    with pytest.raises(CheckFailed, match=r"case 1 of 1 \(x=float32 tensor \(1, 2, 3, 4\), "
                       r"weight=float32 tensor \(2, 3, 3, 3\), stride=2\): .*largest error .* "
                       r"at index \(0, \d, \d, \d\)"):
        grading.check("04_transposed_conv.example", flipped, cases=CASES)


def test_not_implemented_is_explained(refs):
    def blank(x, weight, stride):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="^`.*blank` is not implemented yet"):
        grading.check("04_transposed_conv.example", blank, cases=CASES)


def test_tampered_reference_is_refused(refs):
    path = refs / "04_transposed_conv" / "example.pt"
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ReferenceMissing, match="sha256"):
        grading.check("04_transposed_conv.example", reference_fn, cases=CASES)


def test_edited_inputs_are_detected(refs):
    other = [dict(CASES[0], stride=1)]
    with pytest.raises(ReferenceMissing, match="inputs"):
        grading.check("04_transposed_conv.example", reference_fn, cases=other)


def test_missing_reference_says_what_to_do(refs):
    with pytest.raises(ReferenceMissing, match="segcourse references"):
        grading.check("04_transposed_conv.never_recorded", reference_fn, cases=CASES)


def test_bad_check_ids_and_arguments():
    with pytest.raises(ValueError, match="bad check id"):
        grading.check("conv", reference_fn, cases=CASES)
    with pytest.raises(ValueError, match="compare"):
        grading.check("04_transposed_conv.example", reference_fn, cases=CASES, compare="loose")
    with pytest.raises(ValueError, match="at least one case"):
        grading.check("04_transposed_conv.example", reference_fn, cases=[])


def test_patched_assertion_functions_do_not_change_compare(monkeypatch):
    """compare uses plain arithmetic: a kernel that patches the usual helpers gains nothing."""
    import unittest

    import numpy.testing

    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch, "equal", lambda *a, **k: True)
    monkeypatch.setattr(torch.testing, "assert_close", lambda *a, **k: None)
    monkeypatch.setattr(numpy.testing, "assert_allclose", lambda *a, **k: None)
    monkeypatch.setattr(unittest.TestCase, "assertEqual", lambda *a, **k: None)
    assert compare(T([1.0, 9.0]), T([1.0, 2.0]), "close", TIGHT) is not None
    assert compare(T([1, 9]), T([1, 2]), "exact", TIGHT) is not None


def test_autograde_mode_saves_outputs_and_reads_no_reference(refs, tmp_path, monkeypatch, capsys):
    """While autograding the kernel needs no reference: it saves, the grader compares."""
    results = tmp_path / "results"
    monkeypatch.setenv("SEGCOURSE_RESULTS_DIR", str(results))
    monkeypatch.setenv("SEGCOURSE_REFERENCES", str(tmp_path / "no-references-here"))
    wrong = lambda x, weight, stride: F.conv_transpose2d(x, weight.flip(-1), stride=stride)
    grading.check("04_transposed_conv.example", wrong, cases=CASES)  # no comparison, no error
    assert "saved for grading" in capsys.readouterr().out
    saved = torch.load(results / "04_transposed_conv.example.pt", weights_only=True)
    problem, _, _ = verify("04_transposed_conv.example", saved, "cpu", refs)
    assert problem is not None and "case 1 of 1" in problem
    grading.check("04_transposed_conv.example", reference_fn, cases=CASES)
    saved = torch.load(results / "04_transposed_conv.example.pt", weights_only=True)
    assert verify("04_transposed_conv.example", saved, "cpu", refs)[0] is None


def test_exact_checks_print_no_tolerance(tmp_path, monkeypatch, capsys):
    root = tmp_path / "refs"
    monkeypatch.setenv("SEGCOURSE_REFERENCES", str(root))
    cases = [dict(size=3, kernel=3, stride=2)]
    size = lambda size, kernel, stride: (size - 1) * stride + kernel
    record("04_transposed_conv.size", size, cases, root, monkeypatch, compare="exact")
    grading.check("04_transposed_conv.size", size, cases=cases, compare="exact")
    printed = capsys.readouterr().out
    assert "match the reference exactly" in printed and "rtol" not in printed
    with pytest.raises(CheckFailed, match=r"case 1 of 1 \(size=3, kernel=3, stride=2\): output: expected 7, got 8"):
        grading.check("04_transposed_conv.size", lambda **k: size(**k) + 1, cases=cases, compare="exact")


def test_describe_case_shows_shapes_and_small_values():
    case = dict(x=torch.zeros(2, 3), kernel=torch.tensor([1.0, 2.0]), stride=2, mode="same")
    assert grading.describe_case(case) == "x=float32 tensor (2, 3), kernel=[1.0, 2.0], stride=2, mode='same'"


def test_recording_replaces_a_notebooks_old_references(tmp_path, monkeypatch):
    root = tmp_path / "refs"
    record("04_transposed_conv.old", reference_fn, CASES, root, monkeypatch)
    results = tmp_path / "new"
    monkeypatch.setenv("SEGCOURSE_RESULTS_DIR", str(results))
    grading.check("04_transposed_conv.new", reference_fn, cases=CASES)
    store_results(results, root, notebook="04_transposed_conv")
    manifest = json.loads((root / "manifest.json").read_text())
    assert [e["check"] for e in manifest["references"]] == ["04_transposed_conv.new"]
    assert sorted(p.name for p in (root / "04_transposed_conv").iterdir()) == ["new.pt"]


def test_randn_is_standard_normal_and_pinned():
    sample = grading.randn(100_000, seed=3)
    assert sample.dtype == torch.float32 and sample.shape == (100_000,)
    assert abs(float(sample.mean())) < 0.02 and abs(float(sample.std()) - 1) < 0.02
    assert grading.randn(2, 3, 5, seed=1).shape == (2, 3, 5)
    assert grading.randn(7, seed=1, dtype=torch.float64).dtype == torch.float64
    # Pinned: these numbers must not change (every recorded reference depends on them).
    pinned = torch.tensor([-2.5631, 1.3782, 0.6687])
    assert float((grading.randn(3, seed=0) - pinned).abs().max()) < 1e-4


def test_canonical_inputs_are_reproducible():
    assert torch.equal(grading.randn(3, 4, seed=7), grading.randn(3, 4, seed=7))
    assert not torch.equal(grading.randn(3, 4, seed=7), grading.randn(3, 4, seed=8))
    assert grading.randint(0, 5, (10,), seed=1).dtype == torch.int64
    a = grading.seeded(torch.nn.Linear, 3, 2, seed=3)
    b = grading.seeded(torch.nn.Linear, 3, 2, seed=3)
    assert torch.equal(a.weight, b.weight) and not a.training


def test_outputs_on_other_types_are_explained(refs):
    with pytest.raises(CheckFailed, match="type object"):
        grading.check("04_transposed_conv.example", lambda **kw: object(), cases=CASES)


def test_a_function_that_changes_its_inputs_in_place_is_judged_on_its_output(refs):
    """Inputs are copied for the function: mutating them neither breaks the input fingerprint
    (which would blame a stale reference) nor changes the next case."""
    def mutating(x, weight, stride):
        out = F.conv_transpose2d(x, weight, stride=stride)
        x.zero_()
        weight.mul_(2)
        return out

    grading.check("04_transposed_conv.example", mutating, cases=CASES)
    assert float(CASES[0]["x"].abs().sum()) > 0


def test_checks_run_without_tf32_and_restore_the_flags():
    """cuDNN's TF32 default on a GPU would blur the margin between right and wrong answers:
    every case runs in full float32, and the caller's flags come back afterwards."""
    from segcourse import grading as kernel_side

    seen = []

    def spy(x):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return x

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        kernel_side._run_cases(spy, [dict(x=torch.ones(2))], "cpu", 0)
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
