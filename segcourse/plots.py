"""Pictures of images, masks, predictions, instances and training curves.

Every mask is drawn with the one course palette (``segcourse.masks.PALETTE``: class 0 black,
then the PASCAL VOC colours, the ignore label 255 white), and legends list only the classes
present. Every function returns the matplotlib ``Figure`` and never calls ``plt.show()``.

Figures are made with pyplot, so Jupyter shows them at the end of the cell. If the call is the
last line of a cell, end it with ``;`` (or assign the figure) so that Jupyter does not also
display the returned ``Figure`` a second time::

    show_masks(images, masks, classes=dataset.classes);
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch, Rectangle

from segcourse.masks import IGNORE_INDEX, PALETTE, colorize
from segcourse.metrics import confusion_matrix, segmentation_scores
from segcourse.train import History

__all__ = [
    "show_images",
    "show_masks",
    "overlay",
    "show_prediction",
    "show_instances",
    "plot_history",
]

DPI = 72  # small figures keep notebooks light
PANEL = 2.2  # inches per image panel
ERROR_COLOUR = np.array([1.0, 0.0, 0.0])  # wrong pixels in show_prediction


# --- converting inputs ---------------------------------------------------------------------


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _image_hwc(image, name: str = "image") -> np.ndarray:
    """Image ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` numpy."""
    image = _numpy(image).astype(np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"{name}: expected an image of shape (3, H, W) (or (1, H, W) / (H, W) for grey), "
            f"got {tuple(image.shape)}"
        )
    return np.clip(np.repeat(image, 3 // image.shape[0], axis=0).transpose(1, 2, 0), 0, 1)


def _mask_hw(mask, name: str = "mask", size: tuple[int, int] | None = None) -> np.ndarray:
    """Class-id mask ``(H, W)`` -> int64 numpy, checking its size against the image's."""
    mask = _numpy(mask)
    if mask.ndim != 2 or (size is not None and mask.shape != size):
        expected = "(H, W)" if size is None else f"(H, W) = {size}, the image's size"
        raise ValueError(f"{name}: expected a mask of shape {expected}, got {tuple(mask.shape)}")
    return mask.astype(np.int64)


def _as_list(batch, name: str, item_shape: str) -> list:
    """A batch ``(N, *item_shape)``, one item, or a list -> a list of items."""
    if isinstance(batch, (list, tuple)):
        return list(batch)
    item_ndim = item_shape.count(",") + 1
    if batch.ndim == item_ndim:
        return [batch]
    if batch.ndim == item_ndim + 1:
        return list(batch)
    raise ValueError(
        f"{name}: expected a batch (N, {item_shape}), one item ({item_shape}) or a list, "
        f"got shape {tuple(batch.shape)}"
    )


def _class_name(class_id: int, classes) -> str:
    if class_id == IGNORE_INDEX:
        return "ignore"
    if classes is not None and class_id < len(classes):
        return str(classes[class_id])
    return str(class_id)


def _legend_handles(masks, classes) -> list[Patch]:
    """One colour patch per class id present in any of ``masks`` (ignore last, in white)."""
    present = np.unique(np.concatenate([np.unique(m) for m in masks]))
    return [
        Patch(facecolor=PALETTE[c], edgecolor="0.3", label=_class_name(int(c), classes))
        for c in present
    ]


def _grid(nrows: int, ncols: int, figsize=None):
    figsize = figsize or (PANEL * ncols, PANEL * nrows)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize, dpi=DPI, squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        _frame(ax)
    return fig, axes


def _frame(ax) -> None:
    """No ticks, a thin grey frame (so white ignore pixels at the border stay visible)."""
    ax.set(xticks=[], yticks=[])
    for spine in ax.spines.values():
        spine.set(edgecolor="0.6", linewidth=0.5)


# --- semantic segmentation -----------------------------------------------------------------


def overlay(image, mask, alpha: float = 0.5) -> np.ndarray:
    """Blend the mask's colours over the image; background (class 0) pixels stay as they are.

    Args:
        image: ``(3, H, W)`` in [0, 1] (tensor or array).
        mask: int ``(H, W)`` class ids (255 = ignore, drawn white).
        alpha: weight of the mask colour.

    Returns:
        float ``(H, W, 3)`` numpy array in [0, 1], ready for ``plt.imshow``.
    """
    image = _image_hwc(image)
    return _overlay_hwc(image, _mask_hw(mask, size=image.shape[:2]), alpha)


def _overlay_hwc(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    blend = (1 - alpha) * image + alpha * colorize(mask)  # (H, W, 3)
    return np.where((mask != 0)[..., None], blend, image)


def show_images(images, titles=None, ncols: int = 4, figsize=None):
    """A grid of images.

    Args:
        images: ``(N, 3, H, W)`` tensor, one ``(3, H, W)`` image, or a list of ``(3, H, W)``.
        titles: optional list of N strings.
        ncols: images per row.
    """
    images = _as_list(images, "images", "3, H, W")
    images = [_image_hwc(im, f"images[{i}]") for i, im in enumerate(images)]
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"expected {len(images)} titles (one per image), got {len(titles)}")
    ncols = min(ncols, len(images))
    fig, axes = _grid(-(-len(images) // ncols), ncols, figsize)
    for ax in axes.flat[len(images) :]:
        ax.set_axis_off()
    for i, image in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(image)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return fig


def show_masks(images, masks, classes=None, alpha: float = 0.5, figsize=None):
    """One row per sample: image | coloured mask | overlay, with a legend of the classes present.

    Args:
        images: ``(N, 3, H, W)`` (or one ``(3, H, W)``, or a list).
        masks: int ``(N, H, W)`` (or one ``(H, W)``, or a list); 255 = ignore.
        classes: class names indexed by class id (e.g. ``dataset.classes``).
        alpha: weight of the mask colour in the overlay.
    """
    images, masks = _as_list(images, "images", "3, H, W"), _as_list(masks, "masks", "H, W")
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks")
    images = [_image_hwc(im, f"images[{i}]") for i, im in enumerate(images)]
    masks = [
        _mask_hw(m, f"masks[{i}]", im.shape[:2])
        for i, (im, m) in enumerate(zip(images, masks, strict=True))
    ]

    fig, axes = _grid(len(images), 3, figsize)
    for row, (image, mask) in enumerate(zip(images, masks, strict=True)):
        axes[row, 0].imshow(image)
        axes[row, 1].imshow(colorize(mask), interpolation="nearest")
        axes[row, 2].imshow(_overlay_hwc(image, mask, alpha))
    for ax, title in zip(axes[0], ("image", "mask", "overlay"), strict=True):
        ax.set_title(title, fontsize=10)
    _figure_legend(fig, _legend_handles(masks, classes))
    return fig


def _figure_legend(fig, handles) -> None:
    """Legend to the right of all panels (constrained layout makes room for it)."""
    fig.legend(
        handles=handles, loc="outside right center", fontsize=9, frameon=False, handlelength=1.2
    )


def show_prediction(
    image, pred, target, classes=None, ignore_index: int = IGNORE_INDEX, figsize=None
):
    """image | ground truth | prediction | errors, with the image's scores in the title.

    Args:
        image: ``(3, H, W)``.
        pred: int ``(H, W)`` predicted class ids (e.g. ``predict(model, image)``).
        target: int ``(H, W)`` true class ids; ``ignore_index`` pixels are not scored and
            not marked as errors.
    """
    image = _image_hwc(image)
    pred = _mask_hw(pred, "pred", image.shape[:2])
    target = _mask_hw(target, "target", image.shape[:2])
    wrong = (pred != target) & (target != ignore_index)

    num_classes = int(max(pred.max(), np.where(target == ignore_index, 0, target).max())) + 1
    if classes is not None:
        num_classes = max(num_classes, len(classes))
    scores = segmentation_scores(
        confusion_matrix(
            torch.from_numpy(pred), torch.from_numpy(target), num_classes, ignore_index
        )
    )

    grey = image.mean(-1, keepdims=True).repeat(3, -1) * 0.6 + 0.2  # dimmed, so red stands out
    errors = np.where(wrong[..., None], ERROR_COLOUR, grey)
    fig, axes = _grid(1, 4, figsize)
    panels = (image, colorize(target), colorize(pred), errors)
    titles = ("image", "ground truth", "prediction", f"errors ({wrong.sum()} px)")
    for ax, picture, title in zip(axes[0], panels, titles, strict=True):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        f"pixel accuracy {scores['pixel_accuracy']:.1%}   mean IoU {scores['mean_iou']:.3f}",
        fontsize=11,
    )
    _figure_legend(fig, _legend_handles([target, pred], classes))
    return fig


# --- instances -----------------------------------------------------------------------------


def show_instances(
    image,
    target: dict,
    classes=None,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
    ax=None,
    figsize=None,
):
    """Each instance in its own colour: mask, box and label (and score for predictions).

    Args:
        image: ``(3, H, W)``.
        target: torchvision detection format: ``boxes`` float ``(K, 4)`` xyxy, ``labels``
            int64 ``(K,)``, optional ``masks`` uint8 ``(K, H, W)`` (or Mask R-CNN's
            probabilities ``(K, 1, H, W)``, thresholded at 0.5), optional ``scores`` ``(K,)``:
            instances scoring below ``score_threshold`` are not drawn.
        ax: draw into this axes instead of a new figure.
    """
    image = _image_hwc(image)
    boxes, labels, masks, scores = _instances(target, image.shape[:2])
    if scores is not None:
        keep = scores >= score_threshold
        boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
        masks = masks[keep] if masks is not None else None

    colours = plt.get_cmap("tab10").colors
    picture = image.copy()
    for k in range(len(masks) if masks is not None else 0):
        colour = np.array(colours[k % len(colours)])
        picture[masks[k]] = (1 - alpha) * picture[masks[k]] + alpha * colour

    if ax is None:
        _, ax = plt.subplots(figsize=figsize or (4, 4), dpi=DPI, layout="constrained")
    fig = ax.figure
    ax.imshow(picture)
    _frame(ax)
    for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        colour = colours[k % len(colours)]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=1.5))
        text = _class_name(int(labels[k]), classes)
        if scores is not None:
            text += f" {scores[k]:.2f}"
        ax.text(
            x0,
            y0,
            text,
            fontsize=8,
            color="white",
            va="bottom",
            bbox={"facecolor": colour, "edgecolor": "none", "pad": 1, "alpha": 0.8},
        )
    ax.set_title(f"{len(boxes)} instances", fontsize=10)
    return fig


def _instances(target: dict, size: tuple[int, int]):
    """Check a detection target and return numpy boxes, labels, boolean masks, scores."""
    if "boxes" not in target or "labels" not in target:
        raise ValueError(f"target needs 'boxes' and 'labels', got keys {sorted(target)}")
    boxes, labels = _numpy(target["boxes"]).astype(np.float32), _numpy(target["labels"])
    if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (len(boxes),):
        raise ValueError(
            f"expected boxes (K, 4) and labels (K,), got boxes {tuple(boxes.shape)} "
            f"and labels {tuple(labels.shape)}"
        )
    masks = scores = None
    if "masks" in target:
        masks = _numpy(target["masks"])
        if masks.ndim == 4 and masks.shape[1] == 1:  # Mask R-CNN output (K, 1, H, W)
            masks = masks[:, 0]
        if masks.shape != (len(boxes), *size):
            raise ValueError(
                f"expected masks (K, H, W) = {(len(boxes), *size)}, got {tuple(masks.shape)}"
            )
        masks = masks > 0.5
    if "scores" in target:
        scores = _numpy(target["scores"])
        if scores.shape != (len(boxes),):
            raise ValueError(f"expected scores ({len(boxes)},), got {tuple(scores.shape)}")
    return boxes, labels, masks, scores


# --- training curves -----------------------------------------------------------------------


def plot_history(history, figsize=None):
    """Training loss (raw and smoothed) per step, and validation scores if there are any.

    Args:
        history: a ``segcourse.train.History`` (or a dict of some of its fields: ``step``,
            ``loss`` and optionally ``val_step``, ``val_pixel_accuracy``, ``val_mean_iou``).
    """
    if isinstance(history, dict):
        history = History(**history)
    if not history.loss or len(history.step) != len(history.loss):
        raise ValueError(
            "expected equally long, non-empty step and loss lists, "
            f"got {len(history.step)} steps and {len(history.loss)} losses"
        )
    ncols = 2 if history.val_step else 1
    fig, axes = plt.subplots(
        1, ncols, figsize=figsize or (4 * ncols, 3), dpi=DPI, squeeze=False, layout="constrained"
    )
    ax = axes[0, 0]
    ax.plot(history.step, history.loss, color="C0", alpha=0.3, lw=1, label="loss")
    ax.plot(history.step, history.smoothed_loss(), color="C0", lw=2, label="smoothed")
    ax.set(xlabel="step", ylabel="training loss", title="loss")
    ax.legend(fontsize=8)
    if history.val_step:
        ax = axes[0, 1]
        for name in ("pixel_accuracy", "mean_iou"):
            values = getattr(history, f"val_{name}")
            if len(values) == len(history.val_step):
                ax.plot(history.val_step, values, marker="o", ms=3, label=name)
        ax.set(xlabel="step", ylabel="score", title="validation", ylim=(0, 1.02))
        ax.legend(fontsize=8)
    return fig
