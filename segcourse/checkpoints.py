"""Checkpoints of the course's small models, trained longer than a notebook can.

The notebooks train their models for a minute on a CPU; the checkpoints show what the same
architectures reach with more training. They are made by ``scripts/train_checkpoints.py`` (the
single source of every file here) and listed in ``data/checkpoints/manifest.json``: for each,
the file, its sha256, the device and torch version it was trained with, the steps, the training
time, the mean IoU on the evaluation set and the command that produced it::

    model = UNet(**checkpoint_info("unet_shapes")["model"])   # the notebook's class
    info = load_checkpoint("unet_shapes", model)               # weights in, eval mode
    info["mean_iou"], info["device"]

A checkpoint stores only a ``state_dict``: the architecture is the notebook's class, built with
the keyword arguments recorded under ``"model"``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

__all__ = [
    "CheckpointMissing",
    "checkpoints_dir",
    "load_manifest",
    "checkpoint_info",
    "checkpoint_path",
    "load_checkpoint",
]

MANIFEST = "manifest.json"
HOW_TO_MAKE = "python scripts/train_checkpoints.py"


class CheckpointMissing(FileNotFoundError):
    """A checkpoint (or its manifest entry) is missing or does not match its sha256."""


def checkpoints_dir() -> Path:
    """``data/checkpoints`` in the course repository."""
    return Path(__file__).resolve().parent.parent / "data" / "checkpoints"


def load_manifest(root: Path | None = None) -> dict:
    """The manifest: ``{"checkpoints": [{name, file, sha256, device, ...}, ...]}``."""
    path = (root or checkpoints_dir()) / MANIFEST
    if not path.exists():
        raise CheckpointMissing(
            f"no checkpoint manifest at {path}. The course repository ships it in "
            f"data/checkpoints/; instructors can re-create it with `{HOW_TO_MAKE}`."
        )
    return json.loads(path.read_text())


def checkpoint_info(name: str, root: Path | None = None) -> dict:
    """The manifest entry of checkpoint ``name`` (a dict; ``"model"`` holds the constructor
    keyword arguments, ``"mean_iou"`` the score on the evaluation set)."""
    entries = load_manifest(root)["checkpoints"]
    for entry in entries:
        if entry["name"] == name:
            return entry
    known = sorted(entry["name"] for entry in entries)
    raise CheckpointMissing(f"no checkpoint named {name!r}; known: {known}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_path(name: str, root: Path | None = None, verify: bool = True) -> Path:
    """The file of checkpoint ``name``, after checking that it exists and (``verify``) that
    its sha256 matches the manifest."""
    root = root or checkpoints_dir()
    entry = checkpoint_info(name, root)
    path = root / entry["file"]
    if not path.exists():
        raise CheckpointMissing(
            f"checkpoint file {path} of {name!r} is missing; restore it from the course "
            f"repository (git checkout data/checkpoints) or re-create it with `{HOW_TO_MAKE}`."
        )
    if verify and _sha256(path) != entry["sha256"]:
        raise CheckpointMissing(
            f"checkpoint file {path} of {name!r} does not match its sha256 in the manifest "
            f"(edited or corrupted); restore it or re-create it with `{HOW_TO_MAKE}`."
        )
    return path


def load_checkpoint(
    name: str,
    model: torch.nn.Module,
    device: torch.device | str | None = None,
    root: Path | None = None,
) -> dict:
    """Load checkpoint ``name``'s weights into ``model`` (strictly) and put it in eval mode.

    Args:
        name: e.g. ``"unet_shapes"``; see ``load_manifest()`` for the list.
        model: built with the keyword arguments in ``checkpoint_info(name)["model"]``.
        device: where to put the model; default: where its parameters already are.

    Returns:
        The manifest entry (device, steps, train time, mean IoU, command, ...).

    Raises:
        CheckpointMissing: no such checkpoint, or its file is missing or corrupted.
        RuntimeError: the weights do not fit ``model`` (other architecture or sizes).
    """
    path = checkpoint_path(name, root)
    entry = checkpoint_info(name, root)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(
            f"checkpoint {name!r} does not fit this model; build it with "
            f"{entry.get('model')} ({error})"
        ) from None
    if device is not None:
        model.to(device)
    model.eval()
    return entry
