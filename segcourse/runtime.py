"""Seeding and device choice, shared by every notebook.

>>> from segcourse.runtime import seed_everything, get_device
>>> seed_everything(0)
>>> get_device().type in {"cpu", "cuda"}
True
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "get_device", "device_name"]


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a notebook prints the same twice."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_device(prefer: str | None = None) -> torch.device:
    """The device the course runs on: CUDA when present, else CPU.

    ``prefer`` (or the environment variable ``SEGCOURSE_DEVICE``) forces one, e.g. ``"cpu"``.
    """
    choice = prefer or os.environ.get("SEGCOURSE_DEVICE")
    if choice:
        if choice.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"SEGCOURSE_DEVICE={choice!r} but PyTorch sees no CUDA device; "
                "unset it or use 'cpu'."
            )
        return torch.device(choice)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | str | None = None) -> str:
    """A readable device name: ``"cpu"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type
