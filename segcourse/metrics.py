"""Segmentation metrics: the confusion matrix and the scores read from it.

Everything here starts from one table, the confusion matrix ``conf`` of shape ``(C, C)``:
``conf[t, p]`` counts the pixels whose true class is ``t`` and predicted class is ``p``
(rows = target, columns = prediction). Pixels labelled ``IGNORE_INDEX`` (255) are not counted.
From it, with ``TP = diag(conf)``, ``T = conf.sum(1)`` (true pixels per class) and
``P = conf.sum(0)`` (predicted pixels per class):

- pixel accuracy      ``sum(TP) / sum(T)``
- mean accuracy       ``mean_c TP_c / T_c``
- IoU of class c      ``TP_c / (T_c + P_c - TP_c)``; mean IoU averages it over classes
- frequency-weighted IoU ``sum_c (T_c / sum(T)) * IoU_c``
- boundary mIoU      the mean IoU counted only on the pixels near a ground-truth boundary
  (``boundary_band``): most pixels lie inside regions, where every decent model is right, so
  the plain mIoU hides how well a model draws the outlines; this one shows it.

Notebook 07 asks students to write their own ``confusion_matrix`` and ``segmentation_metrics``;
this module is the course's tool version, used to evaluate models in the other notebooks.

>>> pred = torch.tensor([[0, 1, 1]])
>>> target = torch.tensor([[0, 1, 255]])
>>> confusion_matrix(pred, target, num_classes=2)
tensor([[1, 0],
        [0, 1]])
"""

from __future__ import annotations

import contextlib
import itertools

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from segcourse.masks import IGNORE_INDEX
from segcourse.runtime import get_device

__all__ = [
    "confusion_matrix",
    "segmentation_scores",
    "boundary_band",
    "boundary_miou",
    "evaluate",
]


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Count (true class, predicted class) pairs over all pixels that are not ignored.

    Args:
        pred: int64 ``(N, H, W)`` or ``(H, W)`` predicted class ids in ``[0, num_classes)``.
        target: int64, same shape as ``pred``; class ids or ``ignore_index``.
        num_classes: ``C``.

    Returns:
        int64 ``(C, C)``: ``conf[t, p]`` = number of pixels of true class ``t`` predicted ``p``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    keep = target != ignore_index
    pred, target = pred[keep].long(), target[keep].long()
    for name, ids in (("pred", pred), ("target", target)):
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"{name} has class ids outside [0, {num_classes}) "
                f"(min {int(ids.min())}, max {int(ids.max())}); is num_classes right?"
            )
    # Each (t, p) pair gets its own bin t * C + p; bincount counts them all at once.
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor) -> dict:
    """The standard scores from a confusion matrix ``(C, C)`` (rows = target, cols = pred).

    Returns a dict with floats ``pixel_accuracy``, ``mean_accuracy``, ``mean_iou``, ``fw_iou``
    and float64 ``(C,)`` tensors ``iou`` and ``class_accuracy``. A class that appears in neither
    target nor prediction has IoU NaN and is left out of the means (likewise a class absent
    from the target has accuracy NaN).
    """
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"expected a square (C, C) confusion matrix, got {tuple(conf.shape)}")
    conf = conf.double()
    tp = conf.diag()  # (C,) correctly classified pixels per class
    true = conf.sum(1)  # (C,) pixels of each true class
    predicted = conf.sum(0)  # (C,) pixels predicted as each class
    union = true + predicted - tp

    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union, nan)
    class_accuracy = torch.where(true > 0, tp / true, nan)
    frequency = true / true.sum()
    return {
        "pixel_accuracy": float(tp.sum() / true.sum()),
        "mean_accuracy": float(class_accuracy.nanmean()),
        "mean_iou": float(iou.nanmean()),
        "fw_iou": float((frequency * iou).nansum()),  # classes with frequency 0 add nothing
        "iou": iou,
        "class_accuracy": class_accuracy,
    }


def boundary_band(
    target: torch.Tensor, width: int = 3, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The pixels near a boundary of the ground truth: bool, the shape of ``target``.

    A pixel is in the band when a pixel of another class lies within ``width`` pixels of it in
    chessboard distance (in its ``(2 * width + 1)``-square window). This is the "trimap" band of
    the DeepLab and CRF papers, where they measure how well a model follows object outlines.
    Ignored pixels are never in the band and are not "another class" for their neighbours; the
    image border is not a boundary. ``width=0`` gives an empty band.

    Args:
        target: int64 ``(H, W)`` or ``(N, H, W)`` class ids (or ``ignore_index``).
        width: the band's half-width in pixels, >= 0.

    >>> target = torch.tensor([[0, 0, 0, 1, 1, 1]])
    >>> boundary_band(target, width=1).int()
    tensor([[0, 0, 1, 1, 0, 0]], dtype=torch.int32)
    """
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    if target.ndim not in (2, 3):
        raise ValueError(f"target must be (H, W) or (N, H, W), got {tuple(target.shape)}")
    valid = target != ignore_index
    if width == 0:
        return torch.zeros_like(valid)
    ids = target.reshape(-1, 1, *target.shape[-2:]).double()  # (N, 1, H, W) for the pooling
    keep = valid.reshape(ids.shape)
    # Largest and smallest class id in each window, ignored pixels left out: the window holds
    # another class exactly when they differ (max_pool2d pads with -inf: the border adds none).
    window = dict(kernel_size=2 * width + 1, stride=1, padding=width)
    largest = F.max_pool2d(torch.where(keep, ids, -1.0), **window)
    smallest = -F.max_pool2d(torch.where(keep, -ids, -float(2**31)), **window)
    return ((largest > smallest) & keep).reshape(target.shape)


def boundary_miou(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    width: int = 3,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Mean IoU over the pixels of ``boundary_band(target, width)`` only.

    Classes absent from the band in both ``pred`` and ``target`` are left out of the mean (as
    ``segmentation_scores`` does); NaN when the band is empty (a one-class target).

    Args:
        pred, target: int64 ``(H, W)`` or ``(N, H, W)``, as for ``confusion_matrix``.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    conf = _band_confusion(pred, target, num_classes, width, ignore_index)
    return segmentation_scores(conf)["mean_iou"] if conf.sum() else float("nan")


def _band_confusion(pred, target, num_classes, width, ignore_index) -> torch.Tensor:
    """Confusion matrix (C, C) of the pixels in the boundary band of ``target``."""
    band = boundary_band(target, width, ignore_index)
    return confusion_matrix(pred[band], target[band], num_classes, ignore_index)


def evaluate(
    model: torch.nn.Module,
    loader,
    num_classes: int,
    device: torch.device | str | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict:
    """Run ``model`` over ``loader`` and score its argmax predictions.

    Args:
        model: maps images ``(N, 3, H, W)`` to logits ``(N, C, H, W)`` (or a dict with "out",
            as torchvision's segmentation models do).
        loader: yields ``(images, masks)`` with masks int64 ``(N, H, W)``.
        device: where to run; default: the device the model's parameters are on.
        max_batches: stop after this many batches (quick looks on CPU).

    Returns:
        ``segmentation_scores(conf)`` plus ``"confusion"``: the int64 ``(C, C)`` matrix, and
        ``"boundary_miou"``: the mean IoU on the pixels of ``boundary_band(masks, width=3)``
        (NaN if no pixel is near a boundary). The model's train/eval mode is restored
        afterwards.
    """
    device = _model_device(model) if device is None else torch.device(device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    band_conf = torch.zeros_like(conf)
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        loader = itertools.islice(loader, max_batches)
        total = max_batches if total is None else min(total, max_batches)
    bar = tqdm(loader, total=total, desc="evaluate", disable=not progress, leave=False)
    with _eval_mode(model), torch.no_grad():
        for images, masks in bar:
            pred = _logits(model(images.to(device))).argmax(1)  # (N, H, W)
            pred = pred.cpu()
            conf += confusion_matrix(pred, masks, num_classes, ignore_index)
            band_conf += _band_confusion(pred, masks, num_classes, 3, ignore_index)
    band_miou = segmentation_scores(band_conf)["mean_iou"] if band_conf.sum() else float("nan")
    return {**segmentation_scores(conf), "confusion": conf, "boundary_miou": band_miou}


# Small helpers shared with segcourse.train.


def _logits(output) -> torch.Tensor:
    """Model output -> logits ``(N, C, H, W)``; torchvision segmentation models return a dict."""
    return output["out"] if isinstance(output, dict) else output


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or the course default if it has none)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else get_device()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Put ``model`` in eval mode for the ``with`` block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
