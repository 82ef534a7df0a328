"""05_unet: independent correct implementations pass every test cell; common mistakes fail.

The test cells (visible and hidden) run through ``checks.run_test_cells`` against the recorded
references, with the notebook's function replaced by the implementation under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

sys.path.insert(0, str(Path(__file__).parent))
from checks import run_test_cells, solution_namespace  # noqa: E402

NOTEBOOK = "05_unet"


def all_pass(outcome: dict) -> None:
    failures = {k: v for k, v in outcome.items() if v is not None}
    assert not failures, failures
    assert len(outcome) == 2, f"expected a visible and a hidden test cell, got {sorted(outcome)}"


def some_fail(outcome: dict) -> None:
    assert any(v is not None for v in outcome.values()), "a wrong implementation passed every test"


def notebook_class(name: str, grade_id: str):
    """Execute the solution cell ``grade_id`` (e.g. the given ``__init__``) and return ``name``."""
    return solution_namespace(NOTEBOOK, grade_id)[name]


# ---- center_crop ---------------------------------------------------------------------------


def torchvision_crop(x, size):
    size = [size, size] if isinstance(size, int) else [int(s) for s in size]
    return TF.center_crop(x, size)


def floor_crop(x, size):
    h, w = (size, size) if isinstance(size, int) else size
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def ceil_crop(x, size):
    h, w = (size, size) if isinstance(size, int) else size
    top, left = (x.shape[-2] - h + 1) // 2, (x.shape[-1] - w + 1) // 2
    return x[..., top : top + h, left : left + w]


def test_center_crop_torchvision_passes():
    all_pass(run_test_cells(NOTEBOOK, "center_crop", torchvision_crop))


@pytest.mark.parametrize("wrong", [floor_crop, ceil_crop])
def test_center_crop_rounding_mistakes_fail(wrong):
    some_fail(run_test_cells(NOTEBOOK, "center_crop", wrong))


# ---- crop_and_concat -----------------------------------------------------------------------


def test_crop_and_concat_independent_passes():
    def independent(skip, x):
        return torch.cat([torchvision_crop(skip, x.shape[-2:]), x], dim=1)

    all_pass(run_test_cells(NOTEBOOK, "crop_and_concat", independent))


def test_crop_and_concat_swapped_order_fails():
    def swapped(skip, x):
        return torch.cat([x, torchvision_crop(skip, x.shape[-2:])], dim=1)

    outcome = run_test_cells(NOTEBOOK, "crop_and_concat", swapped)
    assert all(v is not None for v in outcome.values()), outcome


def test_crop_and_concat_floor_crop_fails():
    def floored(skip, x):
        return torch.cat([floor_crop(skip, x.shape[-2:]), x], dim=1)

    some_fail(run_test_cells(NOTEBOOK, "crop_and_concat", floored))


# ---- UNet.forward --------------------------------------------------------------------------


def unet_with(forward):
    UNet = notebook_class("UNet", "UNet")
    return type("UNet", (UNet,), {"forward": forward})


def recursive_forward(self, x):
    """The same network written recursively, with torchvision's crop."""

    def level(i, x):
        if i == len(self.down):
            return self.bottleneck(x)
        skip = self.down[i](x)
        deeper = level(i + 1, self.pool(skip))
        j = len(self.down) - 1 - i
        up = self.up[j](deeper)
        return self.up_blocks[j](torch.cat([torchvision_crop(skip, up.shape[-2:]), up], dim=1))

    return self.head(level(0, x))


def test_unet_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "UNet", unet_with(recursive_forward)))


def test_unet_swapped_concat_fails():
    def swapped(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips), strict=True):
            x = up(x)
            x = block(torch.cat([x, torchvision_crop(skip, x.shape[-2:])], dim=1))
        return self.head(x)

    outcome = run_test_cells(NOTEBOOK, "UNet", unet_with(swapped))
    assert all(v is not None for v in outcome.values()), outcome


def test_unet_top_left_crop_fails():
    def top_left(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips), strict=True):
            x = up(x)
            x = block(torch.cat([skip[..., : x.shape[-2], : x.shape[-1]], x], dim=1))
        return self.head(x)

    some_fail(run_test_cells(NOTEBOOK, "UNet", unet_with(top_left)))


# ---- unet_weight_map -----------------------------------------------------------------------


def brute_force_weight_map(instances, w0=10.0, sigma=5.0, class_weights=True, denominator=None,
                           background_only=True):
    """Distances by brute force (torch.cdist to every pixel of every cell), no scipy."""
    height, width = instances.shape
    flat = instances.flatten()
    foreground = flat > 0
    if class_weights:
        counts = torch.stack([(~foreground).sum(), foreground.sum()]).double()
        present = int((counts > 0).sum())
        weight = flat.numel() / (present * counts[foreground.long()])
    else:
        weight = torch.ones(flat.numel(), dtype=torch.float64)
    ids = torch.unique(flat[foreground])
    if len(ids) >= 2:
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        points = torch.stack([rows.flatten(), cols.flatten()], 1).double()
        nearest = torch.stack([torch.cdist(points, points[flat == k]).min(1).values for k in ids])
        nearest = nearest.sort(0).values
        denominator = 2 * sigma**2 if denominator is None else denominator
        border = w0 * torch.exp(-((nearest[0] + nearest[1]) ** 2) / denominator)
        weight = weight + (border * ~foreground if background_only else border)
    return weight.reshape(height, width).float()


def test_weight_map_brute_force_passes():
    all_pass(run_test_cells(NOTEBOOK, "unet_weight_map", brute_force_weight_map))


@pytest.mark.parametrize("mistake", [
    dict(class_weights=False),  # no w_c: 1 + border term
    dict(denominator="sigma"),  # sigma instead of 2 sigma^2
    dict(background_only=False),  # the border term on the cells too
])
def test_weight_map_mistakes_fail(mistake):
    def wrong(instances, w0=10.0, sigma=5.0):
        kwargs = dict(mistake)
        if kwargs.get("denominator") == "sigma":
            kwargs["denominator"] = sigma
        return brute_force_weight_map(instances, w0, sigma, **kwargs)

    outcome = run_test_cells(NOTEBOOK, "unet_weight_map", wrong)
    assert all(v is not None for v in outcome.values()), outcome


# ---- weighted_cross_entropy ----------------------------------------------------------------


def manual_weighted_ce(logits, target, weight_map):
    valid = target != 255
    log_p = logits.log_softmax(1)
    picked = log_p.gather(1, target.masked_fill(~valid, 0)[:, None])[:, 0]  # (N, H, W)
    total = -(picked * weight_map)[valid].sum()
    return total / max(int(valid.sum()), 1)


def test_weighted_ce_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "weighted_cross_entropy", manual_weighted_ce))


def test_weighted_ce_weighted_mean_fails():
    def weighted_mean(logits, target, weight_map):
        valid = target != 255
        ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
        return (ce * weight_map)[valid].sum() / weight_map[valid].sum()

    some_fail(run_test_cells(NOTEBOOK, "weighted_cross_entropy", weighted_mean))


def test_weighted_ce_counting_ignored_pixels_fails():
    def all_pixels(logits, target, weight_map):
        ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
        return (ce * weight_map).mean()

    some_fail(run_test_cells(NOTEBOOK, "weighted_cross_entropy", all_pixels))


# ---- overlap_tile_predict ------------------------------------------------------------------


def batched_tiles(model, image, tile, margin, mode="reflect"):
    """All windows in one batch, assembled with torch.cat (structurally unlike a loop)."""
    single = image.ndim == 3
    x = image[None] if single else image
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    height, width = x.shape[-2:]
    rows, cols = -(-height // th), -(-width // tw)
    pad = (margin, margin + cols * tw - width, margin, margin + rows * th - height)
    padded = F.pad(x, pad, mode=mode)
    windows = [padded[..., i * th : i * th + th + 2 * margin, j * tw : j * tw + tw + 2 * margin]
               for i in range(rows) for j in range(cols)]
    with torch.no_grad():
        out = model(torch.cat(windows))  # (rows * cols * N, K, h', w')
    out = TF.center_crop(out, [th, tw]).unflatten(0, (rows, cols, x.shape[0]))
    grid = torch.cat([torch.cat(list(row), dim=-1) for row in out], dim=-2)
    grid = grid[..., :height, :width]
    return grid[0] if single else grid


def test_overlap_tile_batched_passes():
    all_pass(run_test_cells(NOTEBOOK, "overlap_tile_predict", batched_tiles))


@pytest.mark.parametrize("mode", ["constant", "replicate"])
def test_overlap_tile_without_mirroring_fails(mode):
    def wrong(model, image, tile, margin):
        return batched_tiles(model, image, tile, margin, mode=mode)

    outcome = run_test_cells(NOTEBOOK, "overlap_tile_predict", wrong)
    assert all(v is not None for v in outcome.values()), outcome

