"""08_mask_rcnn: independent correct implementations pass every test cell; common mistakes fail.

The test cells (visible and hidden) run through ``checks.run_test_cells`` against the references
in ``autograder/references/08_mask_rcnn``, with the notebook's function replaced by the
implementation under test. The correct implementations come from torchvision (``torchvision.ops``,
``roi_heads.project_masks_on_boxes``, ``F.grid_sample``), SciPy, or loops written from the
docstrings in numpy; none is a copy of the notebook's solution.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy import ndimage
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `checks`, however pytest is run

from checks import notebook_cells, run_test_cells, setup_namespace  # noqa: E402

NOTEBOOK = "08_mask_rcnn"


# --------------------------------------------------------------------------------------------
# box_iou
# --------------------------------------------------------------------------------------------


def torchvision_box_iou(a, b):
    return torchvision.ops.box_iou(a, b)


def loop_box_iou(a, b):
    """Pair by pair in numpy (float64), from the docstring."""
    out = np.zeros((len(a), len(b)))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            w = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            h = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = w * h
            out[i, j] = inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)
    return torch.as_tensor(out, dtype=a.dtype, device=a.device)


def plus_one_box_iou(a, b):  # the old PASCAL VOC convention: width = x2 - x1 + 1
    return torchvision.ops.box_iou(a + torch.tensor([0, 0, 1, 1], dtype=a.dtype, device=a.device),
                                   b + torch.tensor([0, 0, 1, 1], dtype=b.dtype, device=b.device))


def unclamped_box_iou(a, b):  # overlap not clamped at 0: two negative sides give a positive area
    sides = torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])
    inter = sides[..., 0] * sides[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None] - inter)


def sum_of_areas_box_iou(a, b):  # union = area_a + area_b, the intersection counted twice
    iou = torchvision.ops.box_iou(a, b)
    return iou / (1 + iou)


# --------------------------------------------------------------------------------------------
# nms
# --------------------------------------------------------------------------------------------


def torchvision_nms(boxes, scores, iou_threshold):
    return torchvision.ops.nms(boxes, scores, iou_threshold)


def loop_nms(boxes, scores, iou_threshold):
    order = np.argsort(-scores.cpu().numpy(), kind="stable")
    iou = loop_box_iou(boxes.cpu().double(), boxes.cpu().double()).numpy() if len(boxes) else np.zeros((0, 0))
    keep, removed = [], set()
    for i in order.tolist():
        if i in removed:
            continue
        keep.append(i)
        removed |= {j for j in range(len(boxes)) if iou[i, j] > iou_threshold}
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def lowest_score_first_nms(boxes, scores, iou_threshold):
    return loop_nms(boxes, -scores, iou_threshold)


def at_threshold_removes_nms(boxes, scores, iou_threshold):  # >= instead of >
    return loop_nms(boxes, scores, iou_threshold - 1e-6)


def ties_last_index_first_nms(boxes, scores, iou_threshold):
    n = len(scores)
    flipped = loop_nms(boxes.flip(0), scores.flip(0), iou_threshold)
    return (n - 1 - flipped).to(torch.int64)


def index_order_nms(boxes, scores, iou_threshold):  # the right boxes, in index order
    return torchvision.ops.nms(boxes, scores, iou_threshold).sort().values


# --------------------------------------------------------------------------------------------
# roi_align (and the numpy RoIAlign that mask_targets' second implementation reuses)
# --------------------------------------------------------------------------------------------


def _bilinear(feature, y, x):
    """torchvision's bilinear_interpolate for one point: feature (C, H, W) -> (C,)."""
    _, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[:, y0, x0] + (1 - ly) * lx * feature[:, y0, x1]
            + ly * (1 - lx) * feature[:, y1, x0] + ly * lx * feature[:, y1, x1])


def numpy_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2,
                    aligned=True, samples=None):
    """Point by point from the docstring; ``samples(h, w) -> (rows, cols)`` overrides the ratio."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    f = features.detach().cpu().double().numpy()
    out = np.zeros((len(boxes), f.shape[1], oh, ow))
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.detach().cpu().double().tolist()):
        x1, y1 = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        w, h = x2 * spatial_scale - offset - x1, y2 * spatial_scale - offset - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        rows, cols = samples(h, w) if samples else (sampling_ratio, sampling_ratio)
        for ph in range(oh):
            for pw in range(ow):
                total = 0.0
                for iy in range(rows):
                    y = y1 + ph * h / oh + (iy + 0.5) * h / oh / rows
                    for ix in range(cols):
                        x = x1 + pw * w / ow + (ix + 0.5) * w / ow / cols
                        total = total + _bilinear(f[int(b)], y, x)
                out[k, :, ph, pw] = total / (rows * cols)
    return torch.as_tensor(out, dtype=features.dtype, device=features.device)


def torchvision_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def no_half_pixel_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, False)


def always_half_pixel_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, True)


def scale_ignored_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return torchvision.ops.roi_align(features, boxes, output_size, 1.0, sampling_ratio, aligned)


def one_sample_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, 1, aligned)


def rounded_box_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    # RoIPool's quantisation: box corners rounded to whole feature cells first
    snapped = boxes.clone()
    snapped[:, 1:] = (boxes[:, 1:] * spatial_scale).round() / spatial_scale
    return torchvision.ops.roi_align(features, snapped, output_size, spatial_scale, sampling_ratio, aligned)


def zero_padded_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    # bilinear sampling with zeros outside the map (F.grid_sample) instead of torchvision's clamping
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = features.shape[-2:]
    offset = 0.5 if aligned else 0.0
    out = []
    for b, x1, y1, x2, y2 in boxes.tolist():
        x1, y1 = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        w, h = x2 * spatial_scale - offset - x1, y2 * spatial_scale - offset - y1
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        ys = y1 + (torch.arange(oh * sampling_ratio, dtype=features.dtype) + 0.5) / (oh * sampling_ratio) * h
        xs = x1 + (torch.arange(ow * sampling_ratio, dtype=features.dtype) + 0.5) / (ow * sampling_ratio) * w
        gy, gx = torch.meshgrid((ys + 0.5) / height * 2 - 1, (xs + 0.5) / width * 2 - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None].to(features.device)
        samples = F.grid_sample(features[int(b)][None], grid, align_corners=False)[0]
        out.append(F.avg_pool2d(samples, sampling_ratio))
    return torch.stack(out) if out else features.new_zeros(0, features.shape[1], oh, ow)


# --------------------------------------------------------------------------------------------
# mask_targets
# --------------------------------------------------------------------------------------------


def torchvision_mask_targets(gt_masks, boxes, size):
    return project_masks_on_boxes(gt_masks, boxes, torch.arange(len(boxes), device=boxes.device), size)


def numpy_mask_targets(gt_masks, boxes, size):
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device)[:, None], boxes], dim=1)
    out = numpy_roi_align(gt_masks[:, None].to(boxes.dtype), rois, size, 1.0, aligned=False,
                          samples=lambda h, w: (math.ceil(h / size), math.ceil(w / size)))
    return out[:, 0]


def uncropped_mask_targets(gt_masks, boxes, size):  # the whole mask resized, the box ignored
    if len(gt_masks) == 0:
        return boxes.new_zeros(0, size, size)
    return F.interpolate(gt_masks[:, None].to(boxes.dtype), size=(size, size), mode="bilinear")[:, 0]


def half_pixel_mask_targets(gt_masks, boxes, size):
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device)[:, None], boxes], dim=1)
    return torchvision.ops.roi_align(gt_masks[:, None].to(boxes.dtype), rois, size, 1.0, -1, True)[:, 0]


def fixed_sampling_mask_targets(gt_masks, boxes, size):
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device)[:, None], boxes], dim=1)
    return torchvision.ops.roi_align(gt_masks[:, None].to(boxes.dtype), rois, size, 1.0, 2, False)[:, 0]


def sliced_mask_targets(gt_masks, boxes, size):  # integer crop of the pixels, then a resize
    out = []
    for mask, (x1, y1, x2, y2) in zip(gt_masks, boxes.round().long().tolist(), strict=True):
        crop = mask[max(y1, 0) : max(y2 + 1, 1), max(x1, 0) : max(x2 + 1, 1)].to(boxes.dtype)
        out.append(F.interpolate(crop[None, None], size=(size, size), mode="bilinear")[0, 0])
    return torch.stack(out) if out else boxes.new_zeros(0, size, size)


# --------------------------------------------------------------------------------------------
# paste_masks
# --------------------------------------------------------------------------------------------


def grid_sample_paste(masks, boxes, height, width, **options):
    """Each mask read at the image's pixels through the box (``options`` go to grid_sample)."""
    options = {"mode": "bilinear", "padding_mode": "zeros", **options}
    out = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist(), strict=True):
        xs = (torch.arange(width, dtype=masks.dtype) - x1) / (x2 - x1) * 2 - 1
        ys = (torch.arange(height, dtype=masks.dtype) - y1) / (y2 - y1) * 2 - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None].to(masks.device)
        out.append(F.grid_sample(mask[None, None], grid, align_corners=False, **options)[0, 0])
    return torch.stack(out) if out else masks.new_zeros(0, height, width)


def scipy_paste(masks, boxes, height, width):
    out = np.zeros((len(masks), height, width))
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    for k, (mask, (x1, y1, x2, y2)) in enumerate(zip(masks.cpu().double().numpy(), boxes.tolist(), strict=True)):
        mh, mw = mask.shape
        u = (cols - x1) * mw / (x2 - x1) - 0.5
        v = (rows - y1) * mh / (y2 - y1) - 0.5
        out[k] = ndimage.map_coordinates(mask, [v, u], order=1, mode="grid-constant", cval=0.0)
    return torch.as_tensor(out, dtype=masks.dtype, device=masks.device)


def torchvision_legacy_paste(masks, boxes, height, width):  # rounds boxes, + 1, pads the mask
    if len(masks) == 0:
        return masks.new_zeros(0, height, width)
    return paste_masks_in_image(masks[:, None], boxes, (height, width))[:, 0]


def pixel_centre_half_paste(masks, boxes, height, width):  # pixel (i, j) at (j + 0.5, i + 0.5)
    return grid_sample_paste(masks, boxes - 0.5, height, width)


def border_padded_paste(masks, boxes, height, width):  # the mask's edge repeated outside the box
    return grid_sample_paste(masks, boxes, height, width, padding_mode="border")


def nearest_paste(masks, boxes, height, width):
    return grid_sample_paste(masks, boxes, height, width, mode="nearest")


# --------------------------------------------------------------------------------------------
# A review's readings (written from the released student notebook only) and more mistakes
# --------------------------------------------------------------------------------------------


def _areas_and_overlap(a, b):
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return area_a[:, None], area_b[None, :], rb - lt


def guarded_union_box_iou(a, b):  # the union clamped away from 0 (defensive code)
    area_a, area_b, wh = _areas_and_overlap(a, b)
    inter = wh.clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def smaller_area_box_iou(a, b):  # intersection over the smaller box
    area_a, area_b, wh = _areas_and_overlap(a, b)
    return wh.clamp(min=0).prod(-1) / torch.minimum(area_a, area_b)


def float32_box_iou(a, b):  # the dtype of the inputs dropped
    return torchvision.ops.box_iou(a.float(), b.float())


def suppression_mask_nms(boxes, scores, iou_threshold):  # each kept box deletes its neighbours
    removed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if not removed[i]:
            keep.append(i)
            removed |= torchvision.ops.box_iou(boxes[i : i + 1], boxes)[0] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def suppressed_boxes_suppress_nms(boxes, scores, iou_threshold):  # deleted boxes still delete others
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    iou = torchvision.ops.box_iou(boxes, boxes)
    keep = [i for r, i in enumerate(order) if all(iou[i, k] <= iou_threshold for k in order[:r])]
    return torch.tensor(keep, dtype=torch.int64)


def int32_nms(boxes, scores, iou_threshold):
    return torchvision.ops.nms(boxes, scores, iou_threshold).to(torch.int32)


def float_when_empty_nms(boxes, scores, iou_threshold):  # torch.tensor([]) is float32
    keep = torchvision.ops.nms(boxes, scores, iou_threshold).tolist()
    return torch.tensor(keep) if keep else torch.tensor([])


def _axis_weights(start, bin_size, bins, samples, size, dtype):
    """(bins, size): each bin's bilinear weights along one axis, its samples averaged (torchvision's borders)."""
    q = torch.arange(bins, dtype=dtype)[:, None]
    s = torch.arange(samples, dtype=dtype)[None, :]
    pos = (start + (q + (s + 0.5) / samples) * bin_size).reshape(-1)
    valid = ((pos >= -1) & (pos <= size)).to(dtype)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(pos), pos - low.to(dtype))
    weights = torch.zeros(len(pos), size, dtype=dtype)
    weights.scatter_add_(1, low[:, None], ((1 - frac) * valid)[:, None])
    weights.scatter_add_(1, high[:, None], (frac * valid)[:, None])
    return weights.reshape(bins, samples, size).mean(1)


def separable_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True,
                        samples=None, offset=None, widen=None):
    """W_y F W_x^T per box, as the exercise suggests; ``samples(h, w)`` gives per-axis sample counts."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = features.shape[-2:]
    offset = (0.5 if aligned else 0.0) if offset is None else offset
    widen = (not aligned) if widen is None else widen
    out = features.new_zeros(len(boxes), features.shape[1], oh, ow)
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in (x1, y1, x2, y2))
        h, w = (max(y2 - y1, 1.0), max(x2 - x1, 1.0)) if widen else (y2 - y1, x2 - x1)
        sy, sx = (sampling_ratio, sampling_ratio) if samples is None else samples(h, w)
        wy = _axis_weights(y1, h / oh, oh, sy, height, features.dtype)
        wx = _axis_weights(x1, w / ow, ow, sx, width, features.dtype)
        out[k] = torch.einsum("ph,chw,qw->cpq", wy, features[int(b)], wx)
    return out


def clamped_grid_sample_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2,
                                  aligned=True, valid_from=-1.0, valid_margin=0.0, pool=F.avg_pool2d):
    """Samples clamped into the map, read with align_corners=True, zeroed outside [-1, H] x [-1, W]."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    r, (height, width) = sampling_ratio, features.shape[-2:]
    out = []
    for b, x1, y1, x2, y2 in boxes.tolist():
        x1, y1, x2, y2 = (v * spatial_scale - (0.5 if aligned else 0.0) for v in (x1, y1, x2, y2))
        h, w = (y2 - y1, x2 - x1) if aligned else (max(y2 - y1, 1.0), max(x2 - x1, 1.0))
        ys = y1 + (torch.arange(oh * r, dtype=features.dtype) + 0.5) * h / (oh * r)
        xs = x1 + (torch.arange(ow * r, dtype=features.dtype) + 0.5) * w / (ow * r)
        valid_y = ((ys >= valid_from) & (ys <= height - valid_margin)).to(features.dtype)
        valid_x = ((xs >= valid_from) & (xs <= width - valid_margin)).to(features.dtype)
        gy, gx = torch.meshgrid(ys.clamp(0, height - 1) / (height - 1) * 2 - 1,
                                xs.clamp(0, width - 1) / (width - 1) * 2 - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        samples = F.grid_sample(features[int(b)][None], grid, align_corners=True)[0]
        out.append(pool(samples * valid_y[:, None] * valid_x[None, :], r))
    return torch.stack(out) if out else features.new_zeros(0, features.shape[1], oh, ow)


def offset_in_image_pixels_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    """(x - 0.5) * scale instead of x * scale - 0.5: half an image pixel, not half a feature cell."""
    if not aligned:
        return separable_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, False)
    shifted = torch.cat([boxes[:, :1], boxes[:, 1:] - 0.5], dim=1)
    return separable_roi_align(features, shifted, output_size, spatial_scale, sampling_ratio, offset=0.0, widen=False)


def unwidened_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return separable_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned, widen=False)


def widened_aligned_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return separable_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned, widen=True)


def first_image_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes[:, 1:]], dim=1)
    return torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


def inside_only_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    """Samples outside [0, H - 1] x [0, W - 1] are 0 (no one-pixel margin)."""
    return clamped_grid_sample_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                                         valid_from=0.0, valid_margin=1.0)


def max_pooled_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return clamped_grid_sample_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                                         pool=F.max_pool2d)


def float32_roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    return torchvision.ops.roi_align(features.float(), boxes.float(), output_size, spatial_scale, sampling_ratio, aligned)


def _rois(boxes):
    return torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], dim=1)


def adaptive_roi_align_mask_targets(gt_masks, boxes, size):  # torchvision's roi_align, sampling_ratio=0
    return torchvision.ops.roi_align(gt_masks[:, None].to(boxes.dtype), _rois(boxes), size, 1.0, 0, False)[:, 0]


def separable_mask_targets(gt_masks, boxes, size, samples=None):
    samples = samples or (lambda h, w: (math.ceil(h / size), math.ceil(w / size)))
    return separable_roi_align(gt_masks[:, None].to(boxes.dtype), _rois(boxes), size, 1.0, 0, False,
                               samples=samples)[:, 0]


def one_ratio_mask_targets(gt_masks, boxes, size):  # max(ceil(h / M), ceil(w / M)) on both axes
    return separable_mask_targets(gt_masks, boxes, size, lambda h, w: (max(math.ceil(h / size), math.ceil(w / size)),) * 2)


def rounded_ratio_mask_targets(gt_masks, boxes, size):  # round(h / M) instead of ceil
    return separable_mask_targets(gt_masks, boxes, size, lambda h, w: (max(round(h / size), 1), max(round(w / size), 1)))


def thresholded_mask_targets(gt_masks, boxes, size):
    return (adaptive_roi_align_mask_targets(gt_masks, boxes, size) >= 0.5).to(boxes.dtype)


def inclusive_box_mask_targets(gt_masks, boxes, size):  # x2 + 1: the box read as pixel-inclusive
    return adaptive_roi_align_mask_targets(gt_masks, boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype), size)


def float32_mask_targets(gt_masks, boxes, size):  # gt_masks.float(): the dtype of boxes dropped
    return adaptive_roi_align_mask_targets(gt_masks.float(), boxes.float(), size)


def padded_mask_paste(masks, boxes, height, width):
    """A ring of zeros around the mask, then align_corners=True sampling of the padded mask."""
    padded, out = F.pad(masks, (1, 1, 1, 1)), []
    mh, mw = masks.shape[-2:]
    for mask, (x1, y1, x2, y2) in zip(padded, boxes.tolist(), strict=True):
        u = ((torch.arange(width, dtype=masks.dtype) - x1) * mw / (x2 - x1) + 0.5).clamp(0, mw + 1)
        v = ((torch.arange(height, dtype=masks.dtype) - y1) * mh / (y2 - y1) + 0.5).clamp(0, mh + 1)
        gy, gx = torch.meshgrid(v / (mh + 1) * 2 - 1, u / (mw + 1) * 2 - 1, indexing="ij")
        out.append(F.grid_sample(mask[None, None], torch.stack([gx, gy], -1)[None], align_corners=True)[0, 0])
    return torch.stack(out) if out else masks.new_zeros(0, height, width)


def align_corners_paste(masks, boxes, height, width):
    out = []
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist(), strict=True):
        gy, gx = torch.meshgrid((torch.arange(height, dtype=masks.dtype) - y1) / (y2 - y1) * 2 - 1,
                                (torch.arange(width, dtype=masks.dtype) - x1) / (x2 - x1) * 2 - 1, indexing="ij")
        out.append(F.grid_sample(mask[None, None], torch.stack([gx, gy], -1)[None], align_corners=True)[0, 0])
    return torch.stack(out) if out else masks.new_zeros(0, height, width)


def no_half_sample_paste(masks, boxes, height, width):  # u = (j - x1) Mw / (x2 - x1), no - 0.5
    mh, mw = masks.shape[-2:]
    shift = torch.stack([(boxes[:, 2] - boxes[:, 0]) / mw, (boxes[:, 3] - boxes[:, 1]) / mh], dim=1) / 2
    return grid_sample_paste(masks, boxes - shift.repeat(1, 2), height, width)


def thresholded_paste(masks, boxes, height, width):
    return (grid_sample_paste(masks, boxes, height, width) > 0.5).to(masks.dtype)


def float32_paste(masks, boxes, height, width):
    return grid_sample_paste(masks.float(), boxes.float(), height, width)


def rounded_box_resize_paste(masks, boxes, height, width):  # resize to the rounded box, then place it
    out = masks.new_zeros(len(masks), height, width)
    for k, (mask, box) in enumerate(zip(masks, boxes.round().long().tolist(), strict=True)):
        x1, y1, x2, y2 = box
        resized = F.interpolate(mask[None, None], size=(max(y2 - y1, 1), max(x2 - x1, 1)), mode="bilinear")[0, 0]
        top, left = max(y1, 0), max(x1, 0)
        bottom, right = min(y1 + resized.shape[0], height), min(x1 + resized.shape[1], width)
        if bottom > top and right > left:
            out[k, top:bottom, left:right] = resized[top - y1 : bottom - y1, left - x1 : right - x1]
    return out


REVIEW_CORRECT = [
    ("box_iou", guarded_union_box_iou),
    ("nms", suppression_mask_nms),
    ("roi_align", separable_roi_align),
    ("roi_align", clamped_grid_sample_roi_align),
    ("mask_targets", adaptive_roi_align_mask_targets),
    ("mask_targets", separable_mask_targets),
    ("paste_masks", padded_mask_paste),
]

REVIEW_MUTANTS = {
    "box_iou": [smaller_area_box_iou, float32_box_iou],
    "nms": [suppressed_boxes_suppress_nms, int32_nms, float_when_empty_nms],
    "roi_align": [offset_in_image_pixels_roi_align, unwidened_roi_align, widened_aligned_roi_align,
                  first_image_roi_align, inside_only_roi_align, max_pooled_roi_align, float32_roi_align],
    "mask_targets": [one_ratio_mask_targets, rounded_ratio_mask_targets, thresholded_mask_targets,
                     inclusive_box_mask_targets, float32_mask_targets],
    "paste_masks": [align_corners_paste, no_half_sample_paste, thresholded_paste, float32_paste,
                    rounded_box_resize_paste],
}


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

CORRECT = [
    ("box_iou", torchvision_box_iou),
    ("box_iou", loop_box_iou),
    ("nms", torchvision_nms),
    ("nms", loop_nms),
    ("roi_align", torchvision_roi_align),
    ("roi_align", numpy_roi_align),
    ("mask_targets", torchvision_mask_targets),
    ("mask_targets", numpy_mask_targets),
    ("paste_masks", grid_sample_paste),
    ("paste_masks", scipy_paste),
    *REVIEW_CORRECT,
]

MUTANTS = {
    "box_iou": [plus_one_box_iou, unclamped_box_iou, sum_of_areas_box_iou],
    "nms": [lowest_score_first_nms, at_threshold_removes_nms, ties_last_index_first_nms, index_order_nms],
    "roi_align": [no_half_pixel_roi_align, always_half_pixel_roi_align, scale_ignored_roi_align,
                  one_sample_roi_align, rounded_box_roi_align, zero_padded_roi_align],
    "mask_targets": [uncropped_mask_targets, half_pixel_mask_targets, fixed_sampling_mask_targets,
                     sliced_mask_targets],
    "paste_masks": [torchvision_legacy_paste, pixel_centre_half_paste, border_padded_paste, nearest_paste],
}
MUTANT_CASES = [(function, mutant) for table in (MUTANTS, REVIEW_MUTANTS)
                for function, mutants in table.items() for mutant in mutants]


@pytest.mark.parametrize(("function", "implementation"), CORRECT, ids=[impl.__name__ for _, impl in CORRECT])
def test_correct_implementation_passes_every_test_cell(function, implementation):
    outcome = run_test_cells(NOTEBOOK, function, implementation)
    assert set(outcome) == {f"test_{function}", f"hidden_{function}"}
    failed = {grade_id: message for grade_id, message in outcome.items() if message}
    assert not failed, failed


def notebook_solutions() -> dict:
    """The setup namespace with every solution cell executed (nms uses box_iou)."""
    namespace = setup_namespace(NOTEBOOK)
    for cell in notebook_cells(NOTEBOOK):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            exec(compile("".join(cell["source"]), f"{NOTEBOOK}:{meta['grade_id']}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("function", list(MUTANTS))
def test_notebook_solution_passes_every_test_cell(function):
    outcome = run_test_cells(NOTEBOOK, function, notebook_solutions()[function])
    assert not any(outcome.values()), outcome


@pytest.mark.parametrize(("function", "mutant"), MUTANT_CASES, ids=[mutant.__name__ for _, mutant in MUTANT_CASES])
def test_common_mistake_fails_the_hidden_tests(function, mutant):
    outcome = run_test_cells(NOTEBOOK, function, mutant)
    assert outcome[f"hidden_{function}"], f"{function} with the mistake {mutant.__name__} passed the hidden tests"
    failures = [message for message in outcome.values() if message]
    assert all("expected" in m or "differ" in m or "Error" in m for m in failures), failures


def test_unimplemented_function_fails_every_cell():
    def not_implemented(*args, **kwargs):
        raise NotImplementedError()

    for function in MUTANTS:
        outcome = run_test_cells(NOTEBOOK, function, not_implemented)
        assert all(outcome.values()), (function, outcome)


def test_independent_implementations_agree_with_torchvision_on_random_cases():
    """The two roi_align / paste readings agree beyond the test cells' cases, borders included."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 9, 13, generator=generator)
    corners = torch.rand(12, 2, generator=generator) * 60 - 8
    sides = torch.rand(12, 2, generator=generator) * 30
    rois = torch.cat([torch.randint(0, 2, (12, 1), generator=generator).float(), corners, corners + sides], dim=1)
    for aligned in (True, False):
        for ratio in (1, 3):
            expected = torchvision.ops.roi_align(features, rois, (3, 4), 0.25, ratio, aligned)
            got = numpy_roi_align(features, rois, (3, 4), 0.25, ratio, aligned)
            assert torch.allclose(got, expected, atol=1e-5)
    masks = torch.rand(4, 6, 5, generator=generator, dtype=torch.float64)
    boxes = torch.cat([corners[:4], corners[:4] + sides[:4] + 1], dim=1).double()
    assert torch.allclose(grid_sample_paste(masks, boxes, 30, 40), scipy_paste(masks, boxes, 30, 40), atol=1e-10)


def test_checkpoint_loads_into_the_notebook_class_and_scores_as_recorded():
    """mask_rcnn_shapes: the notebook's SmallMaskRCNN, COCO scores as in the manifest, AP50 >= 0.5."""
    import importlib.util

    from segcourse.checkpoints import checkpoint_info, load_checkpoint
    from segcourse.data import ShapesDataset

    spec = importlib.util.spec_from_file_location("train_checkpoints", Path(__file__).resolve().parent.parent / "scripts" / "train_checkpoints.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    info = checkpoint_info("mask_rcnn_shapes")
    namespace = script.notebook_namespace(NOTEBOOK, {info["class"], "coco_scores", "predict_instances"})
    model = namespace[info["class"]](**info["model"])
    load_checkpoint("mask_rcnn_shapes", model, device="cpu")
    assert not model.training
    dataset = ShapesDataset(**script.INSTANCE_EVAL, task="instance")
    images, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    scores = namespace["coco_scores"](list(targets), namespace["predict_instances"](model, list(images)),
                                      info["model"]["num_classes"])
    for key, value in scores.items():
        assert abs(value - info[key]) < 0.01, (key, value, info[key])
    assert info["mask_AP50"] >= 0.5
