"""Comparing outputs with references: pure functions that both sides of grading use.

- In a student's kernel, ``grading.check`` uses them for *feedback*: it compares the student's
  outputs with the visible references that ship with the release.
- In the trusted grader (``segcourse.grader``), ``ScoreChecks`` uses them for *scoring*: it
  compares the outputs that the sandboxed kernel saved with the references, which never
  enter the sandbox.

Nothing here runs student code or writes files. The comparison is plain tensor arithmetic (no
``torch.allclose`` / ``assert_close``), so patching those in a kernel changes nothing.

Tolerances are device-aware: a reference recorded on the same kind of device is compared
tightly (float32 round-off from thread counts only); across devices (GPU reference, CPU
student, TF32, cuDNN algorithm choice) the looser ``cross_device`` tolerance applies. Both are
far below the size of a real mistake.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECK_ID_PATTERN",
    "CHECK_CALL_PATTERN",
    "COMPARE_MODES",
    "DEFAULT_TOLERANCE",
    "MANIFEST",
    "ReferenceMissing",
    "Tolerance",
    "compare",
    "load_manifest",
    "load_reference",
    "parse_check_id",
    "reference_path",
    "tolerance_for",
    "verify",
]

# A check id is "<notebook>.<name>[.<suffix>...]", e.g. "04_transposed_conv.conv_transpose2d.hidden".
CHECK_ID_PATTERN = re.compile(r"^(\d\d_[a-z0-9_]+)\.([A-Za-z_][\w]*(?:\.[\w]+)*)$")
# How the grader finds check ids in a test cell's source: the first argument of grading.check
# must be a string literal.
CHECK_CALL_PATTERN = re.compile(r"""\bcheck\(\s*["'](\d\d_[\w.]+)["']""")

DEFAULT_TOLERANCE = {
    # same device kind as the reference: round-off from summation order only
    "rtol": 1e-4,
    "atol": 1e-5,
    # across devices: TF32 matmuls/convs keep 10 mantissa bits (~1e-3 relative error)
    "cross_device_rtol": 1e-2,
    "cross_device_atol": 1e-3,
}
COMPARE_MODES = ("close", "exact", "partition", "sign")
MANIFEST = "manifest.json"


class ReferenceMissing(RuntimeError):
    """No (intact) reference for a check: an instructor must record it."""


# --------------------------------------------------------------------------------------------
# The reference store: <root>/manifest.json and <root>/<notebook>/<name>.pt
# --------------------------------------------------------------------------------------------


def parse_check_id(check_id: str) -> tuple[str, str]:
    """``"04_transposed_conv.conv_transpose2d.hidden"`` -> ``("04_transposed_conv", "conv_transpose2d.hidden")``."""
    match = CHECK_ID_PATTERN.match(check_id)
    if not match:
        raise ValueError(
            f"bad check id {check_id!r}: expected '<NN_notebook>.<name>', "
            "e.g. '04_transposed_conv.conv_transpose2d'"
        )
    return match.group(1), match.group(2)


def reference_path(check_id: str, root: Path) -> Path:
    """File of a check's reference: ``<root>/<notebook>/<name>.pt``."""
    notebook, name = parse_check_id(check_id)
    return root / notebook / f"{name}.pt"


def load_manifest(root: Path) -> dict:
    """The manifest: ``{"references": [{check, file, sha256, device, ...}, ...]}``."""
    path = root / MANIFEST
    if not path.exists():
        return {"references": []}
    return json.loads(path.read_text())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_entry(check_id: str, root: Path) -> dict:
    for entry in load_manifest(root)["references"]:
        if entry["check"] == check_id:
            return entry
    raise ReferenceMissing(
        f"no reference recorded for check {check_id!r} in {root / MANIFEST}. "
        "Instructors: run `segcourse references` to record it. Students: the references/ "
        "folder of your release is missing; ask your instructor for it."
    )


def load_reference(check_id: str, root: Path) -> tuple[dict, dict]:
    """Return ``(reference, manifest_entry)`` after checking the file's sha256."""
    entry = _manifest_entry(check_id, root)
    path = root / entry["file"]
    if not path.exists():
        raise ReferenceMissing(f"reference file {path} for {check_id!r} is missing")
    if sha256_of(path) != entry["sha256"]:
        raise ReferenceMissing(
            f"reference file {path} for {check_id!r} does not match its sha256 in the "
            "manifest (edited or corrupted); re-record it with `segcourse references`"
        )
    return torch.load(path, weights_only=True), entry


# --------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------


@dataclass
class Tolerance:
    rtol: float
    atol: float

    def describe(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g} (times max(1, max|expected|))"


def tolerance_for(reference_device: str, grading_device: str, override: Mapping | None = None):
    """Pick the tolerance for comparing outputs made on ``grading_device`` with a reference."""
    table = {**DEFAULT_TOLERANCE, **(override or {})}
    # Only the same device (both CPU, or the same GPU model) gives the same arithmetic up to
    # summation order; two GPU models may pick other cuDNN algorithms or TF32 settings.
    same_device = _model(reference_device) == _model(grading_device)
    if same_device:
        return Tolerance(table["rtol"], table["atol"])
    return Tolerance(table["cross_device_rtol"], table["cross_device_atol"])


def _model(device: str) -> str:
    """``"cuda:1 (NVIDIA H100 80GB HBM3)"`` -> ``"NVIDIA H100 80GB HBM3"``; ``"cpu"`` -> ``"cpu"``."""
    return device.split("(", 1)[1].rstrip(")") if "(" in device else device.split(":")[0]


# --------------------------------------------------------------------------------------------
# Comparing (nested) outputs
# --------------------------------------------------------------------------------------------


def compare(got: Any, expected: Any, mode: str = "close", tol: Tolerance | None = None,
            where: str = "output") -> str | None:
    """Compare two (nested) outputs; return ``None`` when they agree, else what differs."""
    tol = tol or Tolerance(DEFAULT_TOLERANCE["rtol"], DEFAULT_TOLERANCE["atol"])
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return f"{where}: expected a sequence of {len(expected)} items, got {_kind(got)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=False)):
            problem = compare(g, e, mode, tol, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            keys = sorted(got) if isinstance(got, dict) else _kind(got)
            return f"{where}: expected keys {sorted(expected)}, got {keys}"
        for key in expected:
            problem = compare(got[key], expected[key], mode, tol, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        return _compare_tensors(got, expected, mode, tol, where)
    return _compare_scalars(got, expected, mode, tol, where)


def _kind(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, list):
        return f"a sequence of {len(value)} items"
    return f"a {type(value).__name__}"


def _compare_scalars(got, expected, mode, tol, where) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if mode == "exact" or isinstance(expected, bool):
            if type(got) is not type(expected):
                return (f"{where}: expected {type(expected).__name__} {expected!r}, "
                        f"got {type(got).__name__} {got!r}")
            return None if got == expected else f"{where}: expected {expected!r}, got {got!r}"
        if math.isnan(expected) and math.isnan(got):
            return None
        allowed = tol.atol * max(1.0, abs(expected)) + tol.rtol * abs(expected)
        if abs(got - expected) <= allowed:
            return None
        return f"{where}: expected {expected:.6g}, got {got:.6g} (tolerance {tol.describe()})"
    if got == expected and type(got) is type(expected):
        return None
    return f"{where}: expected {expected!r}, got {_kind(got) if not isinstance(got, (str, bool)) else repr(got)}"


def _compare_tensors(got, expected: torch.Tensor, mode, tol, where) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a tensor of shape {tuple(expected.shape)}, got {_kind(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{where}: expected dtype {expected.dtype}, got {got.dtype}"
    if got.numel() == 0:
        return None
    if mode == "partition":
        return _compare_partitions(got, expected, where)
    if mode == "exact" or not expected.is_floating_point():
        wrong = got != expected
        if not bool(wrong.any()):
            return None
        index = _first_index(wrong)
        return (f"{where}: {int(wrong.sum())} of {wrong.numel()} elements differ; first at "
                f"index {index}: got {got[index].item()!r}, expected {expected[index].item()!r}")
    return _compare_close(got, expected, mode, tol, where)


def _compare_close(got, expected, mode, tol, where) -> str | None:
    g, e = got.double(), expected.double()
    if mode == "sign" and float((g + e).abs().sum()) < float((g - e).abs().sum()):
        g = -g  # eigenvectors are defined up to sign
    nan_mismatch = torch.isnan(g) != torch.isnan(e)
    if bool(nan_mismatch.any()):
        index = _first_index(nan_mismatch)
        return f"{where}: NaN where the reference has none (or the reverse), first at index {index}"
    finite = ~torch.isnan(e)
    scale = max(1.0, float(e[finite].abs().max())) if bool(finite.any()) else 1.0
    error = (g - e).abs().nan_to_num(0.0)
    allowed = tol.atol * scale + tol.rtol * e.abs().nan_to_num(0.0)
    bad = error > allowed
    if not bool(bad.any()):
        return None
    worst = _first_index(error == error.max())
    return (
        f"{where}: {int(bad.sum())} of {bad.numel()} values differ from the reference; "
        f"largest error {float(error.max()):.4g} at index {worst}: got {got[worst].item():.6g}, "
        f"expected {expected[worst].item():.6g} (tolerance {tol.describe()})"
    )


def _compare_partitions(got, expected, where) -> str | None:
    """Label maps that agree up to renaming the labels (k-means clusters, say)."""
    g, e = got.reshape(-1).long(), expected.reshape(-1).long()
    pairs = torch.unique(torch.stack([g, e]), dim=1)
    n_got, n_expected = torch.unique(g).numel(), torch.unique(e).numel()
    if pairs.shape[1] == n_got == n_expected:
        return None
    return (f"{where}: the partition differs from the reference even after renaming labels "
            f"({n_got} labels in yours, {n_expected} in the reference, {pairs.shape[1]} "
            "distinct (yours, reference) label pairs)")


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    flat = int(torch.nonzero(mask.reshape(-1))[0])
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), mask.shape))


# --------------------------------------------------------------------------------------------
# A check's saved outputs against its reference
# --------------------------------------------------------------------------------------------


def verify(check_id: str, saved: Mapping, grading_device: str, root: Path) -> tuple[str | None, Tolerance, str]:
    """Compare a check's saved outputs with its reference.

    ``saved`` is what ``grading.check`` produced: ``{"inputs_sha256", "outputs", "cases"}``
    (``cases``: one readable description of each case's arguments).

    Returns ``(problem or None, tolerance used, compare mode)``; a problem names the case and
    its arguments.
    """
    reference, entry = load_reference(check_id, root)
    if reference["inputs_sha256"] != saved.get("inputs_sha256"):
        raise ReferenceMissing(
            f"the inputs of {check_id!r} differ from those its reference was recorded on "
            "(the test cell was edited, or the reference is stale). Restore the test cell; "
            "instructors: re-record with `segcourse references`."
        )
    tol = tolerance_for(entry["device"], grading_device, entry.get("tolerance"))
    mode = reference["mode"]
    expected, outputs = reference["outputs"], saved.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != len(expected):
        return "outputs: wrong number of cases", tol, mode
    described = saved.get("cases") or []
    for i, (got, want) in enumerate(zip(outputs, expected, strict=False)):
        problem = compare(got, want, mode, tol)
        if problem:
            arguments = f" ({described[i]})" if i < len(described) and isinstance(described[i], str) else ""
            return f"case {i + 1} of {len(expected)}{arguments}: {problem}", tol, mode
    return None, tol, mode
