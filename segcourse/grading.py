"""The check API that the notebooks' test cells call. This is the code that runs in a
student's kernel; it holds no secrets and decides no grade.

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

``check`` runs the function on every case (on the course device: CUDA when present) and then
does one of two things:

- **feedback** (a student working, an instructor testing): compare the outputs with the
  reference, the instructor solution's outputs on the same inputs (the visible ones ship with
  a student release in ``references/``), and raise ``CheckFailed`` with a message that says
  which case (and its arguments) and what differs;
- **save** (``SEGCOURSE_RESULTS_DIR`` set: autograding in a sandbox, or a reference run): write
  the outputs to that folder and compare nothing. The trusted grader (``segcourse.grader``)
  reads them after the sandbox has ended and compares them with references that the sandbox
  never sees; a reference run turns them into references. Patching anything in this module
  therefore changes no grade.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .runtime import device_name, get_device
from .verify import (
    CHECK_CALL_PATTERN,
    CHECK_ID_PATTERN,
    COMPARE_MODES,
    DEFAULT_TOLERANCE,
    ReferenceMissing,
    compare,
    load_manifest,
    parse_check_id,
    verify,
)

__all__ = [
    "CheckFailed",
    "ReferenceMissing",
    "check",
    "randn",
    "rand",
    "randint",
    "seeded",
    "compare",
    "references_dir",
    "load_manifest",
    "CHECK_ID_PATTERN",
    "CHECK_CALL_PATTERN",
    "DEFAULT_TOLERANCE",
]

# Saved outputs larger than this are refused by the grader (see segcourse.grader.preprocessors).
MAX_SAVED_BYTES = 256 * 2**20


class CheckFailed(AssertionError):
    """A student's output differs from the reference. The message says how."""


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
# Where the feedback references live (never used while autograding)
# --------------------------------------------------------------------------------------------


def references_dir() -> Path:
    """The folder holding references and ``manifest.json``, for feedback.

    In order: ``$SEGCOURSE_REFERENCES``; a ``references/`` folder next to the notebook (what a
    student release ships: visible checks only); the course's ``autograder/references`` (an
    instructor working in the repository).
    """
    if os.environ.get("SEGCOURSE_REFERENCES"):
        return Path(os.environ["SEGCOURSE_REFERENCES"])
    local = Path.cwd() / "references"
    if (local / "manifest.json").exists():
        return local
    course = os.environ.get("SEGCOURSE_COURSE_DIR") or Path(__file__).resolve().parent.parent / "autograder"
    return Path(course) / "references"


# --------------------------------------------------------------------------------------------
# Running the function on the cases
# --------------------------------------------------------------------------------------------


def _to_device(value: Any, device: torch.device) -> Any:
    """A copy on ``device``: a function that changes its inputs in place changes no case."""
    if isinstance(value, torch.Tensor):
        return value.to(device, copy=True)
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


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.dim() <= 1 and value.numel() <= 8:
            return repr(value.tolist())
        return f"{str(value.dtype).replace('torch.', '')} tensor {tuple(value.shape)}"
    if isinstance(value, (int, float, bool, str)) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple)) and len(value) <= 6:
        inner = ", ".join(_describe_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__}"
    return f"a {type(value).__name__}"


def describe_case(case: Mapping[str, Any]) -> str:
    """A case's arguments in one line: shapes for tensors, values when small.

    >>> describe_case(dict(x=torch.zeros(2, 3), stride=2))
    'x=float32 tensor (2, 3), stride=2'
    """
    return ", ".join(f"{key}={_describe_value(value)}" for key, value in case.items())


def _run_cases(fn: Callable, cases: Sequence[Mapping[str, Any]], device, seed: int) -> list:
    outputs = []
    with _full_float32():
        for case in cases:
            torch.manual_seed(seed)  # functions with internal randomness are reproducible
            kwargs = _to_device(dict(case), device)
            outputs.append(_to_plain(fn(**kwargs)))
    return outputs


@contextlib.contextmanager
def _full_float32():
    """Checks run without TF32: on a GPU, cuDNN convolutions use TF32 by default (10 mantissa
    bits, about 1e-3 relative error per layer), which would eat into the margin between a
    correct answer and a wrong one. Reference runs and students' checks both run in full
    float32, so devices differ only by summation order. The flags are restored afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _save(results: Path, check_id: str, payload: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    temporary = results / f".{check_id}.tmp"
    torch.save(payload, temporary)
    os.replace(temporary, results / f"{check_id}.pt")


# --------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------


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
        CheckFailed: an output differs; the message says which case, its arguments, and what.
    """
    __tracebackhide__ = True  # noqa: F841 (pytest and IPython hide this frame)
    parse_check_id(check_id)
    if compare not in COMPARE_MODES:
        raise ValueError(f"compare={compare!r}: use one of {COMPARE_MODES}")
    if not cases:
        raise ValueError("check needs at least one case")
    device = torch.device(device) if device is not None else get_device()
    inputs_sha256 = _fingerprint(cases)
    try:
        outputs = _run_cases(fn, cases, device, seed)
    except NotImplementedError:
        raise CheckFailed(f"{_name(fn)} is not implemented yet: replace `raise "
                          "NotImplementedError()` with your solution") from None
    payload = {"check": check_id, "inputs_sha256": inputs_sha256, "mode": compare,
               "seed": seed, "tolerance": dict(tolerance or {}),
               "device": device_name(device), "cases": [describe_case(c) for c in cases],
               "outputs": outputs}
    results = os.environ.get("SEGCOURSE_RESULTS_DIR")
    if results:
        _save(Path(results), check_id, payload)
        print(f"{check_id}: {len(cases)} case(s) saved for grading")
        return
    problem, tol, mode = verify(check_id, payload, payload["device"], references_dir())
    if problem:
        raise CheckFailed(f"{check_id}, {problem}")
    how = "exactly" if mode in ("exact", "partition") else f"within {tol.describe()}"
    print(f"\u2714 {check_id}: {len(cases)} case(s) match the reference {how}")


def _name(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"`{name}`" if name and name != "<lambda>" else "this function"


# --------------------------------------------------------------------------------------------
# One-line messages in Jupyter: no traceback through grading internals
# --------------------------------------------------------------------------------------------


def _short_traceback(shell, etype, value, tb, tb_offset=None):
    """Show ``CheckFailed`` and an exercise's bare ``NotImplementedError`` as one line; any
    other ``NotImplementedError`` (from a library, say) with its usual traceback."""
    if issubclass(etype, NotImplementedError) and str(value):
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    else:
        if issubclass(etype, NotImplementedError):
            frame = tb
            while frame.tb_next is not None:
                frame = frame.tb_next
            value = etype(f"`{frame.tb_frame.f_code.co_name}` is not implemented yet: replace "
                          "`raise NotImplementedError()` with your solution")
        stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)  # IPython 8 does not show what a handler returns
    return stb


def _install_short_tracebacks() -> None:
    try:
        shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821 (IPython only)
    except NameError:
        return
    if shell is not None and hasattr(shell, "set_custom_exc"):
        shell.set_custom_exc((CheckFailed, NotImplementedError), _short_traceback)


_install_short_tracebacks()
