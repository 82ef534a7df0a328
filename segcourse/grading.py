"""The check API that the notebooks' test cells call.

A test cell looks like this::

    from segcourse import grading
    grading.check(
        "04_transposed_conv.conv_transpose1d",      # check id: "<notebook>.<name>[.<suffix>]"
        conv_transpose1d,                           # the student's function
        cases=[                                     # keyword arguments, built on the CPU from seeds
            dict(x=torch.tensor([5.0, 8.0]), kernel=torch.tensor([1.0, 2.0, 1.0]), stride=2),
            dict(x=grading.randn(7, seed=1), kernel=grading.randn(3, seed=2), stride=3),
        ],
    )

``check`` runs the function on every case (on the grading device: CUDA when present) and
compares what it returns with the *reference*: the instructor solution's outputs on the same
inputs, recorded by ``segcourse references`` (see ``segcourse.references``). Three modes,
chosen by environment variables so that the test cells never change:

- **student / instructor** (default): compare and raise ``CheckFailed`` with a message that
  says what differs (shape, dtype, largest error and where);
- **record** (``SEGCOURSE_GRADING_MODE=record``): save the outputs as the reference;
- **autograde** (``SEGCOURSE_RESULTS_DIR`` set by the grader): compare as usual, and also save
  the outputs, so that the grader re-compares them *in its own process*. Patching
  ``torch.allclose`` or this module in the student's kernel therefore gains nothing.

Tolerances are device-aware: a reference recorded on the same kind of device is compared
tightly (float32 round-off from thread counts only); across devices (GPU reference, CPU
student, TF32, cuDNN algorithm choice) the looser ``cross_device`` tolerance applies. Both are
far below the size of a real mistake (a flipped kernel, a missing bias), which changes outputs
by O(1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .runtime import device_name, get_device

__all__ = [
    "CheckFailed",
    "ReferenceMissing",
    "check",
    "compare",
    "randn",
    "rand",
    "randint",
    "seeded",
    "references_dir",
    "reference_path",
    "load_manifest",
    "CHECK_ID_PATTERN",
    "DEFAULT_TOLERANCE",
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


class CheckFailed(AssertionError):
    """A student's output differs from the reference. The message says how."""


class ReferenceMissing(RuntimeError):
    """No (intact) reference for a check: an instructor must record it."""


# --------------------------------------------------------------------------------------------
# Canonical inputs: always made on the CPU from a seed, so every machine sees the same numbers.
# --------------------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard-normal CPU tensor of ``shape``, the same on every machine for the same seed.

    Not ``torch.randn``: its vectorised kernels give different numbers on CPUs with different
    instruction sets (AVX2, AVX-512, none), which would change a check's inputs from machine to
    machine. Uniform draws are bit-identical everywhere; the Box-Muller transform runs in
    float64 and is rounded to float32, which absorbs last-bit differences of ``log``/``cos``.
    """
    count = math.prod(shape)
    uniform = torch.rand(2, (count + 1) // 2, generator=_generator(seed), dtype=torch.float64)
    radius = torch.sqrt(-2.0 * torch.log1p(-uniform[0]))  # 1 - u lies in (0, 1]
    angle = 2.0 * math.pi * uniform[1]
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]
    return normal.to(torch.float32).to(dtype).reshape(shape)


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) CPU tensor of ``shape``, the same on every machine for the same seed."""
    return torch.rand(*shape, generator=_generator(seed), dtype=dtype)


def randint(low: int, high: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """Integer CPU tensor (int64) in ``[low, high)`` of ``shape``."""
    return torch.randint(low, high, tuple(shape), generator=_generator(seed))


def seeded(factory: Callable[..., Any], *args, seed: int = 0, **kwargs) -> Any:
    """Call ``factory(*args, **kwargs)`` under ``torch.manual_seed(seed)`` on the CPU.

    Builds a module with the same initial weights everywhere; a module is put in eval mode.

    >>> layer = seeded(torch.nn.Linear, 3, 2, seed=0)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        made = factory(*args, **kwargs)
    if isinstance(made, torch.nn.Module):
        made.eval()
    return made


# --------------------------------------------------------------------------------------------
# Where references live
# --------------------------------------------------------------------------------------------


def _course_references() -> Path:
    from .references import course_dir

    return course_dir() / "references"


def references_dir() -> Path:
    """The folder holding references and ``manifest.json``.

    In order: ``$SEGCOURSE_REFERENCES``; a ``references/`` folder next to the notebook (what
    ``segcourse release`` puts in a student release: visible checks only); the course
    course's ``autograder/references`` (``$SEGCOURSE_COURSE_DIR/references``).
    """
    if os.environ.get("SEGCOURSE_REFERENCES"):
        return Path(os.environ["SEGCOURSE_REFERENCES"])
    local = Path.cwd() / "references"
    if (local / MANIFEST).exists():
        return local
    return _course_references()


def parse_check_id(check_id: str) -> tuple[str, str]:
    """``"04_transposed_conv.conv_transpose2d.hidden"`` -> ``("04_transposed_conv", "conv_transpose2d.hidden")``."""
    match = CHECK_ID_PATTERN.match(check_id)
    if not match:
        raise ValueError(
            f"bad check id {check_id!r}: expected '<NN_notebook>.<name>', "
            "e.g. '04_transposed_conv.conv_transpose2d'"
        )
    return match.group(1), match.group(2)


def reference_path(check_id: str, root: Path | None = None) -> Path:
    """File of a check's reference: ``<root>/<notebook>/<name>.pt``."""
    notebook, name = parse_check_id(check_id)
    return (root or references_dir()) / notebook / f"{name}.pt"


def load_manifest(root: Path | None = None) -> dict:
    """The manifest: ``{"references": [{check, file, sha256, device, ...}, ...]}``."""
    path = (root or references_dir()) / MANIFEST
    if not path.exists():
        return {"references": []}
    return json.loads(path.read_text())


def _manifest_entry(check_id: str, root: Path) -> dict:
    for entry in load_manifest(root)["references"]:
        if entry["check"] == check_id:
            return entry
    raise ReferenceMissing(
        f"no reference recorded for check {check_id!r} in {root / MANIFEST}. "
        "Instructors: run `segcourse references` to record it. Students: the references/ "
        "folder of your release is missing; ask your instructor for it."
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_reference(check_id: str, root: Path | None = None) -> tuple[dict, dict]:
    """Return ``(reference, manifest_entry)`` after checking the file's sha256."""
    root = root or references_dir()
    entry = _manifest_entry(check_id, root)
    path = root / entry["file"]
    if not path.exists():
        raise ReferenceMissing(f"reference file {path} for {check_id!r} is missing")
    if _sha256(path) != entry["sha256"]:
        raise ReferenceMissing(
            f"reference file {path} for {check_id!r} does not match its sha256 in the "
            "manifest (edited or corrupted); re-record it with `segcourse references`"
        )
    return torch.load(path, weights_only=True), entry


# --------------------------------------------------------------------------------------------
# Running the function on the cases
# --------------------------------------------------------------------------------------------


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _to_plain(value: Any, where: str = "output") -> Any:
    """Outputs -> detached CPU tensors, Python numbers, lists and dicts (safe to torch.save)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        return value.item()
    if hasattr(value, "__array__"):  # numpy array
        return torch.as_tensor(value.__array__()).clone()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise CheckFailed(
        f"{where} has type {type(value).__name__}; expected a tensor, a number, "
        "or a tuple/list/dict of them"
    )


def _fingerprint(cases: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the inputs, to detect a reference recorded on other inputs."""
    digest = hashlib.sha256()
    for case in cases:
        for key in sorted(case):
            digest.update(key.encode())
            _hash_value(digest, case[key])
    return digest.hexdigest()


def _hash_value(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        for item in value:
            _hash_value(digest, item)
    elif isinstance(value, Mapping):
        for key in sorted(value):
            digest.update(str(key).encode())
            _hash_value(digest, value[key])
    else:
        digest.update(repr(value).encode())


def _describe(case: Mapping[str, Any]) -> str:
    parts = []
    for key, value in case.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{key}: {value.dtype} {tuple(value.shape)}")
        elif isinstance(value, (int, float, bool, str)) or value is None:
            parts.append(f"{key}={value!r}")
        else:
            parts.append(f"{key}: {type(value).__name__}")
    return ", ".join(parts)


def _run_cases(fn: Callable, cases: Sequence[Mapping[str, Any]], device, seed: int) -> list:
    outputs = []
    for case in cases:
        torch.manual_seed(seed)  # functions with internal randomness are reproducible
        kwargs = _to_device(dict(case), device)
        outputs.append(_to_plain(fn(**kwargs)))
    return outputs


# --------------------------------------------------------------------------------------------
# Comparing outputs with the reference
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


def compare(got: Any, expected: Any, mode: str = "close", tol: Tolerance | None = None,
            where: str = "output") -> str | None:
    """Compare two (nested) outputs; return ``None`` when they agree, else what differs.

    Written with plain tensor arithmetic (no ``torch.allclose`` / ``assert_close``), and
    called again by the grader in its own process.
    """
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
# Recording and the check itself
# --------------------------------------------------------------------------------------------


def _mode() -> str:
    mode = os.environ.get("SEGCOURSE_GRADING_MODE", "check")
    if mode not in {"check", "record"}:
        raise ValueError(f"SEGCOURSE_GRADING_MODE={mode!r}: use 'check' or 'record'")
    return mode


def _environment(device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }


def _record(check_id, outputs, cases, mode, seed, tolerance, device) -> None:
    root = references_dir()
    path = reference_path(check_id, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = {"check": check_id, "mode": mode, "inputs_sha256": _fingerprint(cases),
                 "outputs": outputs}
    torch.save(reference, path)
    entry = {
        "check": check_id,
        "file": path.relative_to(root).as_posix(),
        "sha256": _sha256(path),
        **_environment(device),
        "seed": seed,
        "cases": len(cases),
        "compare": mode,
        "tolerance": {**DEFAULT_TOLERANCE, **(tolerance or {})},
    }
    update_manifest(root, lambda entries: [e for e in entries if e["check"] != check_id] + [entry])
    print(f"recorded {check_id}: {len(cases)} case(s) on {entry['device']} -> {entry['file']}")


def update_manifest(root: Path, change: Callable[[list[dict]], list[dict]]) -> None:
    """Replace the manifest's entries by ``change(entries)``, sorted by check id.

    Under a lock, because notebooks may be recorded concurrently, and written atomically, so
    that readers never see a half-written file.
    """
    with _locked(root / ".manifest.lock"):
        entries = sorted(change(load_manifest(root)["references"]), key=lambda e: e["check"])
        temporary = root / f".{MANIFEST}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps({"references": entries}, indent=1) + "\n")
        os.replace(temporary, root / MANIFEST)


@contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (POSIX), released on exit."""
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def verify(check_id: str, outputs: list, inputs_sha256: str, grading_device: str,
           root: Path | None = None) -> tuple[str | None, Tolerance]:
    """Compare outputs with the reference. Returns ``(problem or None, tolerance used)``."""
    reference, entry = load_reference(check_id, root)
    if reference["inputs_sha256"] != inputs_sha256:
        raise ReferenceMissing(
            f"the inputs of {check_id!r} differ from those its reference was recorded on "
            "(the test cell was edited, or the reference is stale). Restore the test cell; "
            "instructors: re-record with `segcourse references`."
        )
    tol = tolerance_for(entry["device"], grading_device, entry.get("tolerance"))
    expected = reference["outputs"]
    if not isinstance(outputs, list) or len(outputs) != len(expected):
        return "outputs: wrong number of cases", tol
    for i, (got, want) in enumerate(zip(outputs, expected, strict=False)):
        problem = compare(got, want, reference["mode"], tol)
        if problem:
            return f"case {i + 1} of {len(expected)}: {problem}", tol
    return None, tol


def _save_results(check_id, outputs, cases, device) -> None:
    """In autograding, hand the outputs to the grader, which compares them itself."""
    results = Path(os.environ["SEGCOURSE_RESULTS_DIR"])
    results.mkdir(parents=True, exist_ok=True)
    payload = {"check": check_id, "inputs_sha256": _fingerprint(cases),
               "device": device_name(device), "outputs": outputs}
    torch.save(payload, results / f"{check_id}.pt")


def check(check_id: str, fn: Callable, cases: Sequence[Mapping[str, Any]], *,
          compare: str = "close", tolerance: Mapping[str, float] | None = None,
          seed: int = 0, device: str | torch.device | None = None) -> None:
    """Run ``fn(**case)`` for every case and compare the outputs with the recorded reference.

    Args:
        check_id: ``"<notebook>.<name>"``; a string literal in the test cell.
        fn: the student's function (or a lambda around a module's forward).
        cases: keyword-argument dicts; tensors in them are moved to the grading device.
        compare: ``"close"`` (floats within tolerance), ``"exact"``, ``"partition"`` (label
            maps equal up to renaming labels) or ``"sign"`` (vectors equal up to sign).
        tolerance: overrides of ``DEFAULT_TOLERANCE`` for this check.
        seed: ``torch.manual_seed(seed)`` runs before each case.
        device: where ``fn`` runs; default ``segcourse.runtime.get_device()``.

    Raises:
        CheckFailed: an output differs; the message says which case and what.
    """
    parse_check_id(check_id)
    if compare not in COMPARE_MODES:
        raise ValueError(f"compare={compare!r}: use one of {COMPARE_MODES}")
    if not cases:
        raise ValueError("check needs at least one case")
    device = torch.device(device) if device is not None else get_device()
    try:
        outputs = _run_cases(fn, cases, device, seed)
    except NotImplementedError:
        raise CheckFailed(f"{check_id}: not implemented yet (remove the `raise "
                          "NotImplementedError()` line and write your solution)") from None
    if _mode() == "record":
        _record(check_id, outputs, cases, compare, seed, tolerance, device)
        return
    if os.environ.get("SEGCOURSE_RESULTS_DIR"):
        _save_results(check_id, outputs, cases, device)
    problem, tol = verify(check_id, outputs, _fingerprint(cases), device_name(device))
    if problem:
        raise CheckFailed(f"{check_id}, {problem}")
    print(f"\u2714 {check_id}: {len(cases)} case(s) match the reference ({tol.describe()})")
