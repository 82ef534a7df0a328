"""Fair comparisons of models: equal time budgets, several seeds, and the best a stride can do.

A claim such as "DeepLab beats U-Net" is only as good as its comparison. Three rules make one
fair on a small machine, and ``compare`` applies them:

- **Equal time, not equal steps.** Each run trains for the same number of seconds: a model
  that is twice as slow per step gets half the steps, as it would in practice.
- **Several seeds.** Each (model, seed) pair is a separate run (weights and data order drawn
  from the seed); results are reported as mean ± std over seeds, so a gap smaller than the
  spread is visible as such.
- **Boundary mIoU beside mIoU.** Most pixels lie inside regions; the boundary band shows what
  happens at the outlines, where skips, decoders and CRFs make their difference.

``oracle_scores`` gives the ceiling of a prediction made at a coarse output stride: the ground
truth itself, pooled to the stride and upsampled again.

>>> import torch.nn as nn
>>> from segcourse.data import ScenesDataset
>>> builders = {"1x1": lambda seed: nn.Conv2d(3, 7, 1), "3x3": lambda seed: nn.Conv2d(3, 7, 3,
...             padding=1)}
>>> results = compare(builders, ScenesDataset(16, size=32), ScenesDataset(4, size=32, seed=1),
...                   num_classes=7, time_budget=0.2, seeds=(0, 1), progress=False)
>>> len(results.rows), sorted(results.summary())
(4, ['1x1', '3x3'])
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from segcourse.masks import IGNORE_INDEX
from segcourse.metrics import (
    _band_confusion,
    _eval_mode,
    _logits,
    confusion_matrix,
    segmentation_scores,
)
from segcourse.runtime import device_name, get_device, seed_everything
from segcourse.train import fit

__all__ = ["Results", "compare", "oracle_scores", "recorded", "recording", "save_record"]

SCORES = ("miou", "boundary_miou", "pixel_accuracy")


RECORD_ENV = "SEGCOURSE_RECORD_EXPERIMENTS"
SCALE_ENV = "SEGCOURSE_BUDGET_SCALE"
ONLY_ENV = "SEGCOURSE_RECORD_ONLY"
RECORDS = Path(__file__).resolve().parent.parent / "data" / "experiments"


class Results:
    """The runs of one ``compare`` call.

    ``rows`` is a list of dicts, one per (name, seed) run, in run order, with the keys
    ``name``, ``seed``, ``steps`` (optimiser steps done in the budget), ``seconds`` (training
    time), ``miou``, ``boundary_miou``, ``pixel_accuracy`` and one key per extra metric.
    """

    def __init__(self, rows: Sequence[dict] = (), time_budget: float | None = None):
        self.rows = list(rows)
        self.time_budget = time_budget

    @property
    def names(self) -> list[str]:
        """The model names, in the order they first ran."""
        return list(dict.fromkeys(row["name"] for row in self.rows))

    @property
    def metrics(self) -> list[str]:
        """The score keys of the rows: miou, boundary_miou, pixel_accuracy, then the extras."""
        fixed = {"name", "seed", "steps", "seconds"}
        keys = dict.fromkeys(key for row in self.rows for key in row if key not in fixed)
        return list(keys)

    def summary(self) -> dict[str, dict]:
        """Per name: ``{metric: (mean, std), ..., "steps": mean steps, "seconds": mean
        seconds, "runs": number of seeds}``.

        ``std`` is the sample standard deviation over seeds (``ddof=1``), 0.0 for one seed.
        NaN scores (e.g. a boundary mIoU on an empty band) are left out of mean and std.
        """
        out = {}
        for name in self.names:
            rows = [row for row in self.rows if row["name"] == name]
            entry = {metric: _mean_std([row[metric] for row in rows]) for metric in self.metrics}
            entry["steps"] = sum(row["steps"] for row in rows) / len(rows)
            entry["seconds"] = sum(row["seconds"] for row in rows) / len(rows)
            entry["runs"] = len(rows)
            out[name] = entry
        return out

    def table(self, digits: int = 3) -> str:
        """A printable text table: one line per name, ``mean ± std`` per score, mean steps."""
        summary = self.summary()
        header = ["model", "runs", "steps", *self.metrics]
        lines = [header]
        for name, entry in summary.items():
            cells = [name, str(entry["runs"]), f"{entry['steps']:.0f}"]
            cells += [f"{entry[m][0]:.{digits}f} ± {entry[m][1]:.{digits}f}" for m in self.metrics]
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                for line in lines]
        if self.time_budget is not None:
            text.append(f"(each run: {self.time_budget:g} s of training; mean ± std over seeds)")
        return "\n".join(text)

    def plot(self, metric: str = "miou", ax=None):
        """Bars of the mean ``metric`` per name with the std as an error bar, and one dot per
        seed (so the spread is visible). Returns the matplotlib axes."""
        import matplotlib.pyplot as plt  # only when plotting

        if metric not in self.metrics:
            raise ValueError(f"unknown metric {metric!r}; choose one of {self.metrics}")
        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 + 1.0 * len(self.names), 3), dpi=72)
        summary = self.summary()
        for x, name in enumerate(self.names):
            mean, std = summary[name][metric]
            ax.bar(x, mean, yerr=std, color="#9ecae1", edgecolor="#3182bd", capsize=4)
            values = [row[metric] for row in self.rows if row["name"] == name]
            offsets = torch.linspace(-0.15, 0.15, len(values)).tolist() if len(values) > 1 else [0]
            ax.scatter([x + o for o in offsets], values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(self.names)), self.names)
        ax.set_ylabel(metric)
        if self.time_budget is not None:
            ax.set_title(f"{metric}: {self.time_budget:g} s per run, dots = seeds", fontsize=10)
        return ax

    def __repr__(self) -> str:
        return self.table()


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [float(v) for v in values if not math.isnan(float(v))]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compare(
    builders: Mapping[str, Callable[[int], torch.nn.Module]],
    train_set,
    val_set,
    *,
    num_classes: int,
    time_budget: float,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    lr: float = 3e-3,
    loss_fn: Callable | None = None,
    step_fn: Callable | None = None,
    metrics: Mapping[str, Callable[[torch.Tensor, torch.Tensor], float]] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    record: str | None = None,
) -> Results:
    """Train every model with every seed for the same time, then score each on ``val_set``.

    For each name in ``builders`` and each seed: ``seed_everything(seed)``, ``model =
    builders[name](seed)``, then ``segcourse.train.fit`` for ``time_budget`` seconds (Adam,
    ``lr``; ``loss_fn`` or cross-entropy ignoring 255, or a custom ``step_fn``) on batches of
    ``batch_size`` drawn in an order given by the seed; then the argmax predictions on all of
    ``val_set`` are scored.

    **Longer runs, recorded.** ``record`` names this comparison. When the environment variable
    ``SEGCOURSE_RECORD_EXPERIMENTS`` is set to a folder (``scripts/record_experiments.py`` sets
    it), every ``time_budget`` is multiplied by ``SEGCOURSE_BUDGET_SCALE`` (default 1), the
    budget counts the CPU seconds of this process (``time.process_time``: fair when other work
    shares the machine) and the results go to ``<folder>/<record>.json``; ``recorded(record)``
    reads the shipped ones back (``data/experiments/``), so a notebook can show the longer runs
    next to its own short ones. With ``SEGCOURSE_RECORD_ONLY`` set to a comma-separated list
    of names (``record_experiments.py --only``), only those comparisons are recorded; the
    others run as they do in the notebook.

    Both datasets are generated once, before the first run, and kept in memory as tensors: the
    budget is spent on training, not on drawing scenes, and every run sees the same items. (A
    ``TensorDataset`` is used as it is, so several ``compare`` calls can share one.)

    Args:
        builders: name -> ``callable(seed) -> nn.Module`` returning logits ``(N, C, H, W)``
            (or torchvision's dict with "out").
        train_set, val_set: items ``(image (3, H, W), mask (H, W))``.
        num_classes: C.
        time_budget: training seconds per run (the same for every run). The clock is read
            after every step, so a run can go over by at most one step.
        seeds: one run per seed and name.
        metrics: extra scores, name -> ``callable(pred (N, H, W), target (N, H, W)) -> float``
            on the whole validation set (e.g. the IoU of one class only).
        device: default ``get_device()``.
        progress: a tqdm bar over the runs.

    Returns:
        ``Results`` with one row per run: name, seed, steps, seconds, miou, boundary_miou,
        pixel_accuracy and the extra metrics.
    """
    if not builders:
        raise ValueError("builders is empty: give at least one name -> callable(seed)")
    if time_budget <= 0:
        raise ValueError(f"time_budget must be > 0 seconds, got {time_budget}")
    device = get_device() if device is None else torch.device(device)
    clock = time.perf_counter
    this_recorded = recording(record)
    if this_recorded:  # a recording run: longer budgets, in CPU seconds
        time_budget = time_budget * _scale()
        clock = time.process_time
    train_data, val_data = _materialise(train_set), _materialise(val_set)
    metrics = dict(metrics or {})
    runs = [(name, seed) for name in builders for seed in seeds]
    rows = []
    for name, seed in tqdm(runs, desc="compare", unit="run", disable=not progress):
        seed_everything(seed)
        model = builders[name](seed)
        order = torch.Generator().manual_seed(int(seed))
        loader = DataLoader(train_data, batch_size=batch_size, shuffle=True, generator=order,
                            drop_last=len(train_data) >= batch_size)
        history = fit(model, loader, loss_fn, lr=lr, time_budget=time_budget, device=device,
                      progress=False, seed=seed, step_fn=step_fn, clock=clock)
        pred, target = _predict_all(model, val_data, batch_size, device)
        conf = confusion_matrix(pred, target, num_classes, IGNORE_INDEX)
        band = _band_confusion(pred, target, num_classes, 3, IGNORE_INDEX)
        scores = segmentation_scores(conf)
        row = {
            "name": name,
            "seed": seed,
            "steps": len(history.step),
            "seconds": history.time[-1],
            "miou": scores["mean_iou"],
            "boundary_miou": segmentation_scores(band)["mean_iou"] if band.sum() else math.nan,
            "pixel_accuracy": scores["pixel_accuracy"],
        }
        row.update({key: float(metric(pred, target)) for key, metric in metrics.items()})
        rows.append(row)
    results = Results(rows, time_budget)
    results.scaled = this_recorded
    if record:
        save_record(results, record, device=device)  # writes only in a recording run that records it
    return results


def recording(name: str | None = None) -> bool:
    """Whether this is a recording run (``scripts/record_experiments.py``) that records the
    comparison ``name``: ``SEGCOURSE_RECORD_EXPERIMENTS`` is set and, if
    ``SEGCOURSE_RECORD_ONLY`` lists names, ``name`` is one of them. A notebook guards a
    comparison too long to run live with it, and shows ``recorded(name)`` instead.

    >>> recording("06_deeplab.context128")  # in a notebook or a test: not recording
    False
    """
    if not os.environ.get(RECORD_ENV):
        return False
    only = [n.strip() for n in os.environ.get(ONLY_ENV, "").split(",") if n.strip()]
    return not only or name in only


def _scale() -> float:
    return float(os.environ.get(SCALE_ENV, "1"))


def save_record(results: Results, name: str, device=None) -> Path | None:
    """In a recording run that records ``name`` (``recording(name)``), write ``results`` to
    ``<folder>/<name>.json`` with what they ran on, and return the path; otherwise do nothing
    and return None. For results put together from several ``compare`` calls."""
    if not recording(name):
        return None
    folder = os.environ[RECORD_ENV]  # set: recording() checked it
    budget = results.time_budget
    if budget is not None and not getattr(results, "scaled", False):
        budget = budget * _scale()  # a budget the notebook wrote, before scaling
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "time_budget": budget,
        "scale": _scale(),
        "clock": "cpu",
        "device": device_name(device) if device is not None else device_name(get_device()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "recorded": datetime.date.today().isoformat(),
        "command": os.environ.get("SEGCOURSE_RECORD_COMMAND", ""),
        "rows": results.rows,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def recorded(name: str, root: Path | str | None = None) -> tuple[Results, dict] | None:
    """The shipped longer run of comparison ``name``: ``(Results, info)``, or None when none
    is shipped. ``info`` says how it was run: ``time_budget`` (CPU seconds per run when
    ``clock`` is "cpu"), ``device``, ``threads``, ``torch``, ``recorded`` (date), ``command``."""
    path = Path(root or RECORDS) / f"{name}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    rows = record.pop("rows")
    return Results(rows, record["time_budget"]), record


def _materialise(dataset) -> TensorDataset:
    """All ``(image, mask)`` items of ``dataset`` as one TensorDataset (generated once)."""
    if isinstance(dataset, TensorDataset):
        return dataset
    images, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return TensorDataset(torch.stack(images), torch.stack(masks))


def _predict_all(model, data: TensorDataset, batch_size: int, device):
    """Argmax predictions and targets for every item: int64 ``(N, H, W)`` each, on the CPU."""
    preds = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(data), batch_size):
            images = data.tensors[0][start : start + batch_size].to(device)
            preds.append(_logits(model(images)).argmax(1).cpu())
    return torch.cat(preds), data.tensors[1]


def oracle_scores(val_set, strides: Sequence[int], num_classes: int,
                  ignore_index: int = IGNORE_INDEX) -> dict[int, dict[str, float]]:
    """What the ground truth keeps when said at each output stride: the scores on ``val_set``.

    For a stride ``s``, the "oracle" knows the ground truth but can only say it at the
    resolution of an ``s``-strided score map: the one-hot ground truth ``(C, H, W)`` is
    average-pooled over ``s x s`` windows (the fraction of each class in each cell; ignored
    pixels count for no class; a window cut by the border averages what it holds), upsampled
    back to ``(H, W)`` bilinearly with ``align_corners=False`` (as the models upsample their
    logits) and its argmax taken. It shows what a stride throws away (thin and small
    things vanish), but it is a reference, not a strict ceiling: a model's logits are not class
    fractions, and upsampled they can place an edge better than pooled fractions do. At
    stride 1 this is the ground truth (scores 1.0).

    Returns:
        ``{stride: {"miou": float, "boundary_miou": float}}`` over the whole set.
    """
    loader = DataLoader(val_set, batch_size=16)
    conf = {s: torch.zeros(num_classes, num_classes, dtype=torch.int64) for s in strides}
    band = {s: torch.zeros_like(conf[s]) for s in strides}
    for _, masks in loader:
        valid = masks != ignore_index
        onehot = F.one_hot(torch.where(valid, masks, 0), num_classes)  # (N, H, W, C)
        onehot = (onehot * valid[..., None]).permute(0, 3, 1, 2).float()  # (N, C, H, W)
        for s in strides:
            pooled = F.avg_pool2d(onehot, s, s, ceil_mode=True) if s > 1 else onehot
            up = F.interpolate(pooled, size=masks.shape[-2:], mode="bilinear",
                               align_corners=False)
            pred = up.argmax(1)
            conf[s] += confusion_matrix(pred, masks, num_classes, ignore_index)
            band[s] += _band_confusion(pred, masks, num_classes, 3, ignore_index)
    return {
        s: {
            "miou": segmentation_scores(conf[s])["mean_iou"],
            "boundary_miou": (segmentation_scores(band[s])["mean_iou"] if band[s].sum()
                              else math.nan),
        }
        for s in strides
    }
