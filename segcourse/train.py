"""A small training loop with step, epoch and time budgets, and argmax prediction::

    history = fit(model, train_loader, time_budget=60, val_loader=val_loader, num_classes=3)
    history.plot()                  # loss curve and validation scores
    masks = predict(model, images)  # (N, 3, H, W) -> int64 (N, H, W)

``fit`` loops over the loader again and again until the first budget runs out: ``max_steps``
optimiser steps, ``epochs`` passes over the loader, or ``time_budget`` seconds (checked after
every step, so a CPU run in a notebook stays within its time). The same call trains longer on
a GPU when given a larger budget. Batches are ``(images, masks)`` by default; anything else
(e.g. Mask R-CNN's lists of images and target dicts) goes through a ``step_fn``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from segcourse.masks import IGNORE_INDEX
from segcourse.metrics import _eval_mode, _logits, _model_device, evaluate
from segcourse.runtime import get_device, seed_everything

__all__ = ["History", "fit", "predict"]


@dataclass(repr=False)
class History:
    """What ``fit`` recorded: one entry per optimiser step, one per validation run.

    ``step``/``loss``/``time`` have one entry per step (``time`` = seconds since the start);
    ``val_step``/``val_pixel_accuracy``/``val_mean_iou`` one per evaluation on ``val_loader``.
    ``stopped_by`` says which budget ended the run: ``"steps"``, ``"time"`` or ``"epochs"``.
    ``planned_steps`` is the number of steps the step/epoch budgets allow (None when only time
    limits the run) and ``time_budget`` the seconds allowed; ``cut_by_time`` is True when the
    time budget stopped the run before ``planned_steps``, and ``budget_note()`` says so in words.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_pixel_accuracy: list[float] = field(default_factory=list)
    val_mean_iou: list[float] = field(default_factory=list)
    epochs: int = 0  # complete passes over the training loader
    stopped_by: str = ""
    planned_steps: int | None = None
    time_budget: float | None = None

    @property
    def cut_by_time(self) -> bool:
        """The time budget ended the run before the planned number of steps."""
        return (self.stopped_by == "time" and self.planned_steps is not None
                and len(self.step) < self.planned_steps)

    def budget_note(self) -> str:
        """One sentence when the time budget cut the run short (else ``""``): how far it got and
        what that means for the results."""
        if not self.cut_by_time:
            return ""
        return (
            f"Note: the time budget ({self.time_budget:g} s) stopped this training after "
            f"{len(self.step)} of {self.planned_steps} steps, because this machine is slower "
            "(or busier) than the one the notebook was written on. That is normal: the model "
            "is simply trained less, so its scores are lower than the figures in the text, and "
            "the checks that need the full run are skipped. For the full run, raise time_budget "
            "or use a GPU."
        )

    def smoothed_loss(self, beta: float = 0.9) -> list[float]:
        """Exponential moving average of ``loss`` (bias-corrected, so it starts at loss[0])."""
        smoother, smoothed = _Smoother(beta), []
        for value in self.loss:
            smoother.update(value)
            smoothed.append(smoother.value)
        return smoothed

    def plot(self, **kwargs):
        """Loss curve (and validation scores); see ``segcourse.plots.plot_history``."""
        from segcourse.plots import plot_history  # matplotlib only when plotting

        return plot_history(self, **kwargs)

    def __repr__(self) -> str:
        if not self.step:
            return "History(no steps)"
        text = (
            f"History(steps={self.step[-1]}, epochs={self.epochs}, "
            f"loss={self.smoothed_loss()[-1]:.4f}, time={self.time[-1]:.1f}s"
        )
        if self.val_step:
            text += f", val_mean_iou={self.val_mean_iou[-1]:.4f}"
        return text + f", stopped_by={self.stopped_by!r})"


def fit(
    model: torch.nn.Module,
    train_loader,
    loss_fn: Callable | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    epochs: int | None = None,
    max_steps: int | None = None,
    time_budget: float | None = None,
    val_loader=None,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    log_every: int = 10,
    seed: int | None = None,
    step_fn: Callable | None = None,
    val_every: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> History:
    """Train ``model`` on ``train_loader`` until the first budget is reached.

    Args:
        model: for the default step, maps images ``(N, 3, H, W)`` to logits ``(N, C, H, W)``.
        train_loader: yields ``(images, masks)``, masks int64 ``(N, H, W)``; it is iterated
            again and again (one pass = one epoch) until a budget is reached.
        loss_fn: ``loss_fn(logits, masks) -> scalar``; default cross-entropy ignoring 255.
        optimizer: default ``Adam(model.parameters(), lr)``.
        epochs, max_steps, time_budget: the budgets (passes, optimiser steps, seconds); give
            at least one. The time is checked after every step, so at least one step runs.
        val_loader, num_classes: if given, ``evaluate`` runs at the end of every epoch (and
            every ``val_every`` steps if set) and at the end of training.
        device: default ``get_device()`` (CUDA when present); the model is moved there.
        clock: what ``time_budget`` and ``History.time`` count: wall-clock seconds by default;
            ``time.process_time`` counts the CPU seconds of this process instead, which a busy
            machine does not change (fair budgets when several runs share the cores).
        progress: show a tqdm bar (step, smoothed loss, elapsed time); ``log_every`` steps
            between updates of the loss shown on it. When the time budget ends the run before
            its planned steps, the bar still ends as a normal stop, labelled "stopped by time
            budget after N of M steps", and ``History.budget_note()`` is printed under it.
        seed: if given, ``seed_everything(seed)`` first (loader shuffling, dropout, ...).
        step_fn: ``step_fn(model, batch, device) -> scalar loss`` for batches that are not
            ``(images, masks)``; e.g. for torchvision's Mask R-CNN::

                def step_fn(model, batch, device):
                    images, targets = batch
                    images = [im.to(device) for im in images]
                    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                    return sum(model(images, targets).values())

    Returns:
        A ``History``. The model is left in eval mode.
    """
    if epochs is None and max_steps is None and time_budget is None:
        raise ValueError("give at least one budget: epochs, max_steps or time_budget")
    if val_loader is not None and num_classes is None:
        raise ValueError("val_loader needs num_classes (the number of classes C)")
    if seed is not None:
        seed_everything(seed)
    device = get_device() if device is None else torch.device(device)
    model.to(device)
    loss_fn = loss_fn or torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    step_fn = step_fn or _supervised_step(loss_fn)

    total = _total_steps(train_loader, epochs, max_steps)
    history = History(planned_steps=total, time_budget=time_budget)
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    smoothed, postfix = _Smoother(), {}  # postfix: what the bar shows after the counts
    start = clock()

    def validate():
        scores = evaluate(model, val_loader, num_classes, device=device, progress=False)
        history.val_step.append(len(history.step))
        history.val_pixel_accuracy.append(scores["pixel_accuracy"])
        history.val_mean_iou.append(scores["mean_iou"])
        postfix.update(loss=f"{smoothed.value:.4f}", val_miou=f"{scores['mean_iou']:.3f}")
        bar.set_postfix(postfix)

    model.train()
    while not history.stopped_by:
        steps_before = len(history.step)
        for batch in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = step_fn(model, batch, device)
            loss.backward()
            optimizer.step()

            step = len(history.step) + 1
            history.step.append(step)
            history.loss.append(loss.item())
            history.time.append(clock() - start)
            smoothed.update(history.loss[-1])
            bar.update()
            if step % log_every == 0:
                postfix.update(loss=f"{smoothed.value:.4f}")
                bar.set_postfix(postfix)
            if val_loader is not None and val_every and step % val_every == 0:
                validate()
            if max_steps is not None and step >= max_steps:
                history.stopped_by = "steps"
                break
            if time_budget is not None and history.time[-1] >= time_budget:
                history.stopped_by = "time"
                break
        else:  # the loader ran out: one epoch done
            if len(history.step) == steps_before:
                raise ValueError("train_loader yielded no batches")
            history.epochs += 1
            if epochs is not None and history.epochs >= epochs:
                history.stopped_by = "epochs"
            elif val_loader is not None:
                validate()

    if val_loader is not None and history.val_step[-1:] != history.step[-1:]:
        validate()  # always finish with the scores of the final model
    _close_bar(bar, history)
    if progress and history.cut_by_time:
        print(history.budget_note())  # under the bar: what the cut means for what follows
    model.eval()
    return history


def _close_bar(bar, history: History) -> None:
    """Close the progress bar as a normal end, also when the time budget stopped the run before
    its planned steps (tqdm would show a red, unfinished bar: it reads as an error)."""
    if history.stopped_by == "time":
        done = len(history.step)
        planned = f" of {history.planned_steps}" if history.cut_by_time else ""
        bar.set_description_str(f"train (stopped by time budget after {done}{planned} steps)",
                                refresh=False)
        if bar.total is not None and bar.n < bar.total:
            bar.total = bar.n
            container = getattr(bar, "container", None)  # tqdm.notebook's widget
            try:
                container.children[1].max = bar.n
            except (AttributeError, IndexError, TypeError):
                pass
        bar.refresh()
    bar.close()


def predict(
    model: torch.nn.Module, images: torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """Argmax class per pixel, without gradients, in eval mode (then the mode is restored).

    Args:
        images: float32 ``(N, 3, H, W)`` (or one image ``(3, H, W)``).
        device: where to run; default: the device the model's parameters are on.

    Returns:
        int64 ``(N, H, W)`` on the CPU (``(H, W)`` for one image).
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    device = _model_device(model) if device is None else torch.device(device)
    batch = images[None] if images.ndim == 3 else images
    with _eval_mode(model), torch.no_grad():
        pred = _logits(model(batch.to(device))).argmax(1).cpu()  # (N, H, W)
    return pred[0] if images.ndim == 3 else pred


def _supervised_step(loss_fn: Callable) -> Callable:
    """The default step: ``(images, masks)`` batch -> ``loss_fn(model(images), masks)``."""

    def step(model, batch, device):
        images, masks = batch
        logits = _logits(model(images.to(device, non_blocking=True)))  # (N, C, H, W)
        return loss_fn(logits, masks.to(device, non_blocking=True))

    return step


class _Smoother:
    """Running exponential moving average, the same as ``History.smoothed_loss``."""

    def __init__(self, beta: float = 0.9):
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, value: float) -> None:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * value

    @property
    def value(self) -> float:
        return self.average / (1 - self.beta**self.count) if self.count else float("nan")


def _total_steps(loader, epochs: int | None, max_steps: int | None) -> int | None:
    """How many steps the progress bar expects (None when only a time budget is known)."""
    per_epoch = len(loader) if hasattr(loader, "__len__") else None
    candidates = [max_steps] if max_steps is not None else []
    if epochs is not None and per_epoch is not None:
        candidates.append(epochs * per_epoch)
    return min(candidates) if candidates else None
