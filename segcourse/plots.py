"""Pictures of images, masks, predictions, instances, training curves and architectures.

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
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from matplotlib.path import Path

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
    "layer_shapes",
    "plot_architecture",
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


# --- architectures -------------------------------------------------------------------------


def _output_shape(output, name: str) -> tuple:
    """The shape of a module's output: a tensor, or the first tensor of a tuple/list/dict."""
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    values = output.values() if isinstance(output, dict) else output
    if isinstance(values, (list, tuple)) or isinstance(output, dict):
        for value in values:
            if isinstance(value, torch.Tensor):
                return tuple(value.shape)
    raise TypeError(f"module {name!r} returned {type(output).__name__}, not a tensor")


def layer_shapes(model: torch.nn.Module, x: torch.Tensor, names) -> list[tuple[str, tuple]]:
    """Output shapes of the named submodules of ``model`` on the input ``x``, in the order they run.

    One forward pass in eval mode and without gradients (the model's mode is restored after it),
    with a forward hook on each named module (``dict(model.named_modules())[name]``); the hooks
    are removed afterwards, also when the forward pass fails. A module that runs more than once
    reports its first call.

    Args:
        model: any ``nn.Module``.
        x: its input, e.g. ``(1, 3, H, W)``; moved to the model's device.
        names: submodule names as ``named_modules()`` spells them (``"stages.2"``, ``"fc"``).

    Returns:
        ``[(name, shape), ...]``, e.g. ``[("stages.0", (1, 16, 64, 64)), ...]``, with ``shape``
        the full output shape (batch dimension included), ordered by when each module ran.

    Raises:
        KeyError: a name that is not a submodule of ``model`` (the message lists some that are).
        ValueError: a named module that did not run in the forward pass.
    """
    names = list(names)
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        known = [name for name in modules if name][:20]
        raise KeyError(
            f"no submodule named {unknown} in {type(model).__name__}; its submodules "
            f"include {known}"
        )
    shapes: dict[str, tuple] = {}  # insertion order = order of the first call

    def hook_for(name):
        def hook(module, inputs, output):
            shapes.setdefault(name, _output_shape(output, name))

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in dict.fromkeys(names)]
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(x if param is None else x.to(param.device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name in names if name not in shapes]
    if missing:
        raise ValueError(
            f"the modules {missing} did not run in {type(model).__name__}'s forward "
            "pass on this input"
        )
    return list(shapes.items())


def _stage_label(shape: tuple) -> str:
    """``(N, C, H, W)`` -> ``"C x H x W"`` (the batch dimension dropped)."""
    dims = shape[1:] if len(shape) > 1 else shape
    return " x ".join(str(d) for d in dims)


def plot_architecture(model, x, stages, skips=(), title=None, ax=None):
    """A block diagram of ``model`` drawn from its own output shapes on the input ``x``.

    The input and then one block per stage, left to right in the order given: the block's height
    grows with the spatial size H (square-root scale, so a 4 x 4 map stays visible beside a
    128 x 128 one), its width with the channel count C (square-root scale); it is labelled
    "C x H x W" under the stage's name. Arrows join consecutive blocks (the data path), and a
    red arrow over the blocks marks each skip (the longer the skip, the higher it runs).

    Args:
        model: an ``nn.Module``; its shapes come from ``layer_shapes(model, x, ...)``.
        x: an input, e.g. ``(1, 3, 128, 128)``.
        stages: the data path: submodule names (``"stages.2"``) or ``(name, label)`` pairs
            (``("stages.2", "pool3")``); the label is what the figure shows.
        skips: ``(from_stage, to_stage)`` pairs, each given by name or label.
        title: the axes title.
        ax: draw into this axes instead of a new figure (about 8 x 3 inches, dpi 72).

    Returns:
        the matplotlib ``Figure``.

    Raises:
        ValueError: a skip naming a stage that is not in ``stages``; see also ``layer_shapes``.
    """
    pairs = [(stage, stage) if isinstance(stage, str) else tuple(stage) for stage in stages]
    names = [name for name, _ in pairs]
    labels = [label for _, label in pairs]
    index = {
        **{name: i for i, name in enumerate(names)},
        **{lab: i for i, lab in enumerate(labels)},
    }
    for skip in skips:
        if len(skip) != 2:
            raise ValueError(f"a skip is a (from_stage, to_stage) pair, got {skip!r}")
        for end in skip:
            if end not in index:
                raise ValueError(
                    f"skip {tuple(skip)!r}: {end!r} is not one of the stages "
                    f"{labels} (give a stage's name or its label)"
                )
    shapes = dict(layer_shapes(model, x, names))
    blocks = [("input", tuple(x.shape))] + [(label, shapes[name]) for name, label in pairs]

    def spatial(shape):
        return shape[-2] if len(shape) >= 4 else 1

    def channels(shape):
        return shape[1] if len(shape) >= 2 else shape[0]

    max_h = max(spatial(s) for _, s in blocks)
    max_c = max(channels(s) for _, s in blocks)
    heights = [0.1 + 0.9 * (spatial(s) / max_h) ** 0.5 for _, s in blocks]
    widths = [0.1 + 0.45 * (channels(s) / max_c) ** 0.5 for _, s in blocks]
    lefts = [i + (0.55 - width) / 2 for i, width in enumerate(widths)]  # one slot per block

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3), dpi=DPI, layout="constrained")
    fig = ax.figure
    colours = plt.get_cmap("viridis")
    for i, ((label, shape), left, width, height) in enumerate(
        zip(blocks, lefts, widths, heights, strict=True)
    ):
        colour = "0.85" if i == 0 else colours(0.25 + 0.6 * (i - 1) / max(1, len(blocks) - 2))
        ax.add_patch(
            Rectangle((left, -height / 2), width, height, facecolor=colour, edgecolor="0.2", lw=0.8)
        )
        ax.text(
            left + width / 2,
            -0.55,
            f"{label}\n{_stage_label(shape)}",
            ha="center",
            va="top",
            fontsize=7,
        )
        if i > 0:
            ax.add_patch(
                FancyArrowPatch(
                    (lefts[i - 1] + widths[i - 1], 0),
                    (left, 0),
                    arrowstyle="-|>",
                    mutation_scale=8,
                    color="0.2",
                    lw=0.8,
                )
            )
    # Skips: up from the source block, across above every block, down into the target block;
    # longer skips run higher, so nested skips (a U-Net's) do not cross.
    spans = sorted(skips, key=lambda skip: abs(index[skip[1]] - index[skip[0]]))
    for level, (start, end) in enumerate(spans):
        a, b = index[start] + 1, index[end] + 1  # + 1: the input block comes first
        top = 0.62 + 0.12 * level
        xa, xb = lefts[a] + widths[a] / 2, lefts[b] + widths[b] / 2
        path = Path(
            [(xa, heights[a] / 2), (xa, top), (xb, top), (xb, heights[b] / 2)],
            [Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO],
        )
        ax.add_patch(
            FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=8, color="C3", lw=1.0)
        )
    top = 0.62 + 0.12 * len(skips)
    ax.set(xlim=(-0.25, len(blocks) - 0.2), ylim=(-1.0, max(0.6, top)))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return fig
