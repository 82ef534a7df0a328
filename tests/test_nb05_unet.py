"""05_unet: independent correct implementations pass every test cell; common mistakes fail.

The test cells (visible and hidden) run through ``checks.run_test_cells`` against the recorded
references, with the notebook's function replaced by the implementation under test.

Margins: a grader on another device (a GPU) compares with the cross-device tolerance
(``segcourse.verify``: 1e-3 x max(1, max |reference|) + 1e-2 x |reference|, about 3e-3 for the
values here). ``margins`` reruns every case of a test cell's checks with the right and with a
wrong implementation and measures how far apart they are, in units of that tolerance: each
common mistake must land more than ``MARGIN`` (10) tolerances away in the hidden check, so that
it fails on any device, not only on the one the references were recorded on.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import checks  # noqa: E402
from checks import run_test_cells, setup_namespace, solution_namespace  # noqa: E402

from segcourse.verify import DEFAULT_TOLERANCE  # noqa: E402

NOTEBOOK = "05_unet"
MARGIN = 10  # a mistake must be this many cross-device tolerances away from the right output


def all_pass(outcome: dict) -> None:
    failures = {k: v for k, v in outcome.items() if v is not None}
    assert not failures, failures
    assert len(outcome) == 2, f"expected a visible and a hidden test cell, got {sorted(outcome)}"


def some_fail(outcome: dict) -> None:
    assert any(v is not None for v in outcome.values()), "a wrong implementation passed every test"


def notebook_class(name: str, grade_id: str):
    """Execute the solution cell ``grade_id`` (e.g. the given ``__init__``) and return ``name``."""
    return solution_namespace(NOTEBOOK, grade_id)[name]


# ---- margins against the cross-device tolerance ----------------------------------------------


def captured_checks(function: str, correct) -> list:
    """Every ``grading.check`` call in ``function``'s test cells, run with ``correct``:
    ``(grade_id, check_id, fn, cases, compare, namespace)``; nothing is compared."""
    found = []
    for grade_id, source in checks.test_cells(NOTEBOOK, function).items():
        namespace = setup_namespace(NOTEBOOK)
        namespace[function] = correct
        calls = []

        class Recorder:  # the grading module, except that check only records its arguments
            def __getattr__(self, name, grading=namespace["grading"]):
                return getattr(grading, name)

            @staticmethod
            def check(check_id, fn, cases, compare="close", _calls=calls, **kwargs):
                _calls.append((check_id, fn, cases, compare))

        namespace["grading"] = Recorder()
        exec(compile(source, f"{NOTEBOOK}:{grade_id}", "exec"), namespace)
        found += [(grade_id, *call, namespace) for call in calls]
    return found


def distance(got, expected, mode: str) -> float:
    """Largest |got - expected| in units of the cross-device tolerance (inf: other shape, dtype,
    an exact mismatch, or an error)."""
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return math.inf
        return max([distance(g, e, mode) for g, e in zip(got, expected, strict=True)] or [0.0])
    if isinstance(got, torch.Tensor):
        got = got.detach()
    if isinstance(expected, torch.Tensor):
        expected = expected.detach()
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != expected.dtype:
            return math.inf
        if mode == "exact" or not expected.is_floating_point():
            return 0.0 if torch.equal(got, expected) else math.inf
        if expected.numel() == 0:
            return 0.0
    elif isinstance(expected, bool) or mode == "exact":
        return 0.0 if got == expected else math.inf
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    scale = max(1.0, float(expected.abs().max()))
    allowed = (DEFAULT_TOLERANCE["cross_device_atol"] * scale
               + DEFAULT_TOLERANCE["cross_device_rtol"] * expected.abs())
    both_nan = got.isnan() & expected.isnan()  # verify.compare accepts NaN where NaN is expected
    return float(((got - expected).abs() / allowed).masked_fill(both_nan, 0).nan_to_num(math.inf).max())


def margins(function: str, correct, wrong) -> dict:
    """check_id -> the distance of ``wrong`` from ``correct`` in each case (see ``distance``)."""
    result = {}
    for _, check_id, fn, cases, mode, namespace in captured_checks(function, correct):
        distances = []
        for case in cases:
            outputs = []
            for implementation in (correct, wrong):
                namespace[function] = implementation  # what a lambda in the cell looks up
                call = implementation if fn is correct else fn
                torch.manual_seed(0)
                copies = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
                try:
                    outputs.append(call(**copies))
                except Exception:  # noqa: BLE001 (an error is a failed case)
                    outputs.append(None)
            namespace[function] = correct
            distances.append(math.inf if outputs[1] is None else distance(outputs[1], outputs[0], mode))
        result[check_id] = distances
    return result


def assert_far_off(function: str, correct, wrong) -> None:
    """``wrong`` is more than MARGIN cross-device tolerances off in some case of the hidden
    check, and off by some amount in the visible one (or fails its teaching asserts)."""
    found = margins(function, correct, wrong)
    hidden = {k: v for k, v in found.items() if ".hidden" in k}
    assert hidden, found
    assert any(max(d) > MARGIN for d in hidden.values()), (
        f"a mistake within {MARGIN} cross-device tolerances of the right answer in every hidden "
        f"case: {found}"
    )


# ---- center_crop ---------------------------------------------------------------------------


def torchvision_crop(x, size):
    size = [size, size] if isinstance(size, int) else [int(s) for s in size]
    if size[0] > x.shape[-2] or size[1] > x.shape[-1]:
        raise ValueError("crop larger than the input")  # torchvision would pad instead
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
    assert_far_off("center_crop", torchvision_crop, wrong)


def test_center_crop_without_value_error_fails():
    def padding_crop(x, size):  # torchvision's own: pads a crop larger than the input
        return TF.center_crop(x, [size, size] if isinstance(size, int) else [int(s) for s in size])

    outcome = run_test_cells(NOTEBOOK, "center_crop", padding_crop)
    assert outcome["test_center_crop"] is not None, outcome


def test_center_crop_four_dimensions_only_fails():
    def four_d(x, size):
        h, w = (size, size) if isinstance(size, int) else size
        top, left = round((x.shape[2] - h) / 2), round((x.shape[3] - w) / 2)
        return x[:, :, top : top + h, left : left + w]

    outcome = run_test_cells(NOTEBOOK, "center_crop", four_d)
    assert all(v is not None for v in outcome.values()), outcome


# ---- crop_and_concat -----------------------------------------------------------------------


def crop_and_concat_right(skip, x):
    return torch.cat([torchvision_crop(skip, x.shape[-2:]), x], dim=1)


def test_crop_and_concat_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "crop_and_concat", crop_and_concat_right))


def test_crop_and_concat_swapped_order_fails():
    def swapped(skip, x):
        return torch.cat([x, torchvision_crop(skip, x.shape[-2:])], dim=1)

    outcome = run_test_cells(NOTEBOOK, "crop_and_concat", swapped)
    assert all(v is not None for v in outcome.values()), outcome
    assert_far_off("crop_and_concat", crop_and_concat_right, swapped)


def test_crop_and_concat_floor_crop_fails():
    def floored(skip, x):
        return torch.cat([floor_crop(skip, x.shape[-2:]), x], dim=1)

    some_fail(run_test_cells(NOTEBOOK, "crop_and_concat", floored))
    assert_far_off("crop_and_concat", crop_and_concat_right, floored)


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


def forward_with(join):
    """The loop forward with ``join(skip, upsampled)`` in place of crop-and-concatenate."""

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.up_blocks, reversed(skips), strict=True):
            x = up(x)
            x = block(join(skip, x))
        return self.head(x)

    return forward


UNET_MISTAKES = {
    "swapped concatenation": lambda skip, x: torch.cat([x, torchvision_crop(skip, x.shape[-2:])], 1),
    "top-left crop": lambda skip, x: torch.cat([skip[..., : x.shape[-2], : x.shape[-1]], x], 1),
    "crop rounded up": lambda skip, x: torch.cat([ceil_crop(skip, x.shape[-2:]), x], 1),
    "skip resized, not cropped": lambda skip, x: torch.cat(
        [F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False), x], 1),
}


def test_unet_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "UNet", unet_with(recursive_forward)))


@pytest.mark.parametrize("mistake", sorted(UNET_MISTAKES))
def test_unet_mistakes_fail_far_off(mistake):
    wrong = unet_with(forward_with(UNET_MISTAKES[mistake]))
    some_fail(run_test_cells(NOTEBOOK, "UNet", wrong))
    assert_far_off("UNet", unet_with(recursive_forward), wrong)


def test_unet_swapped_concat_fails_both_cells():
    outcome = run_test_cells(NOTEBOOK, "UNet", unet_with(forward_with(UNET_MISTAKES["swapped concatenation"])))
    assert all(v is not None for v in outcome.values()), outcome


def test_unet_checks_are_not_the_head_bias():
    """The seeded networks of the checks keep their signal: every logit map varies across its
    pixels by several cross-device tolerances (with default init it was almost the bias), and
    stays below 1, where that tolerance is absolute (so TF32 round-off stays small)."""
    for _, check_id, fn, cases, _, _ in captured_checks("UNet", unet_with(recursive_forward)):
        for case in cases:
            with torch.no_grad():
                logits = fn(**case)
            spread = float(logits.std(dim=(-2, -1)).min())  # the flattest logit map of the case
            allowed = DEFAULT_TOLERANCE["cross_device_atol"] * max(1.0, float(logits.abs().max()))
            assert spread > 3 * allowed, (check_id, spread, allowed)
            assert float(logits.abs().max()) < 1  # the tolerance is absolute there (1e-3)


# ---- unet_weight_map -----------------------------------------------------------------------


def brute_force_weight_map(instances, w0=10.0, sigma=5.0, class_weights=True, denominator=None,
                           background_only=True, distance="sum", square=True):
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
        d = nearest[0] + nearest[1] if distance == "sum" else nearest[0]
        border = w0 * torch.exp(-(d**2 if square else d) / denominator)
        weight = weight + (border * ~foreground if background_only else border)
    return weight.reshape(height, width).float()


WEIGHT_MAP_MISTAKES = {
    "no w_c (1 + border term)": dict(class_weights=False),
    "sigma instead of 2 sigma^2": dict(denominator="sigma"),
    "border term on every pixel (the paper's map, not the docstring's)": dict(background_only=False),
    "d1 only": dict(distance="d1"),
    "(d1 + d2) not squared": dict(square=False),
}


def test_weight_map_brute_force_passes():
    all_pass(run_test_cells(NOTEBOOK, "unet_weight_map", brute_force_weight_map))


@pytest.mark.parametrize("mistake", sorted(WEIGHT_MAP_MISTAKES))
def test_weight_map_mistakes_fail(mistake):
    def wrong(instances, w0=10.0, sigma=5.0):
        kwargs = dict(WEIGHT_MAP_MISTAKES[mistake])
        if kwargs.get("denominator") == "sigma":
            kwargs["denominator"] = sigma
        return brute_force_weight_map(instances, w0, sigma, **kwargs)

    outcome = run_test_cells(NOTEBOOK, "unet_weight_map", wrong)
    assert all(v is not None for v in outcome.values()), outcome
    assert_far_off("unet_weight_map", brute_force_weight_map, wrong)


# ---- weighted_cross_entropy ----------------------------------------------------------------


def manual_weighted_ce(logits, target, weight_map):
    valid = target != 255
    log_p = logits.log_softmax(1)
    picked = log_p.gather(1, target.masked_fill(~valid, 0)[:, None])[:, 0]  # (N, H, W)
    total = -(picked * weight_map)[valid].sum()
    return total / max(int(valid.sum()), 1)


def weighted_mean_ce(logits, target, weight_map):
    valid = target != 255
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    return (ce * weight_map)[valid].sum() / weight_map[valid].sum()


def all_pixels_ce(logits, target, weight_map):
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    return (ce * weight_map).mean()


def summed_ce(logits, target, weight_map):
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    return (ce * weight_map).sum()


def test_weighted_ce_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "weighted_cross_entropy", manual_weighted_ce))


@pytest.mark.parametrize("wrong", [weighted_mean_ce, all_pixels_ce, summed_ce])
def test_weighted_ce_mistakes_fail_far_off(wrong):
    some_fail(run_test_cells(NOTEBOOK, "weighted_cross_entropy", wrong))
    assert_far_off("weighted_cross_entropy", manual_weighted_ce, wrong)


# ---- overlap_tile_predict ------------------------------------------------------------------


def batched_tiles(model, image, tile, margin, mode="reflect", crop="centre", grad=False, set_eval=False):
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
    if set_eval:
        model.eval()
    with torch.set_grad_enabled(grad):
        out = model(torch.cat(windows))  # (rows * cols * N, K, h', w')
    out = TF.center_crop(out, [th, tw]) if crop == "centre" else out[..., :th, :tw]
    out = out.unflatten(0, (rows, cols, x.shape[0]))
    grid = torch.cat([torch.cat(list(row), dim=-1) for row in out], dim=-2)
    grid = grid[..., :height, :width]
    return grid[0] if single else grid


OVERLAP_MISTAKES = {
    "zero padding": dict(mode="constant"),
    "replicate padding": dict(mode="replicate"),
    "circular padding": dict(mode="circular"),
    "top-left of the output instead of its centre": dict(crop="top-left"),
}


def test_overlap_tile_batched_passes():
    all_pass(run_test_cells(NOTEBOOK, "overlap_tile_predict", batched_tiles))


@pytest.mark.parametrize("mistake", sorted(OVERLAP_MISTAKES))
def test_overlap_tile_mistakes_fail_far_off(mistake):
    def wrong(model, image, tile, margin):
        return batched_tiles(model, image, tile, margin, **OVERLAP_MISTAKES[mistake])

    outcome = run_test_cells(NOTEBOOK, "overlap_tile_predict", wrong)
    assert all(v is not None for v in outcome.values()), outcome
    assert_far_off("overlap_tile_predict", batched_tiles, wrong)


@pytest.mark.parametrize("mistake", [dict(grad=True), dict(set_eval=True)])
def test_overlap_tile_gradients_or_mode_change_fail(mistake):
    """The docstring's promises: computed without gradients; the model's mode left as it is."""

    def wrong(model, image, tile, margin):
        return batched_tiles(model, image, tile, margin, **mistake)

    outcome = run_test_cells(NOTEBOOK, "overlap_tile_predict", wrong)
    assert all(v is not None for v in outcome.values()), outcome


def _tf32(t):
    """Round float32 values to TF32's 10 mantissa bits (what a GPU's convolutions may use)."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_unet_tf32_round_off_stays_well_inside_the_tolerance():
    """A correct forward whose convolutions see TF32-rounded inputs and weights (a GPU grader
    with cuDNN's default TF32) stays within a fifth of the cross-device tolerance: the He-scaled
    checks separate mistakes (> MARGIN) from device round-off (< 0.2) on both sides."""
    right = unet_with(recursive_forward)

    def rounded_forward(self, x):
        model = copy.deepcopy(self)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                with torch.no_grad():
                    module.weight.copy_(_tf32(module.weight))
                module.register_forward_pre_hook(lambda module, args: (_tf32(args[0]),))
        return recursive_forward(model, x)

    with torch.no_grad():
        found = margins("UNet", right, unet_with(rounded_forward))
    assert all(d < 0.2 for distances in found.values() for d in distances), found
    assert max(max(d) for d in found.values()) > 0, found  # the rounding did change something


def _rounded_to_tf32(model):
    """A copy of ``model`` whose convolutions see TF32-rounded inputs and weights."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            with torch.no_grad():
                module.weight.copy_(_tf32(module.weight))
            module.register_forward_pre_hook(lambda module, args: (_tf32(args[0]),))
    return model


def test_overlap_tile_tf32_round_off_stays_well_inside_the_tolerance():
    """The small convolutional nets of the checks, on a GPU with TF32 convolutions, stay within
    a fifth of the cross-device tolerance (the mistakes above land more than MARGIN away)."""

    def on_tf32(model, image, tile, margin):
        return batched_tiles(_rounded_to_tf32(model), image, tile, margin)

    found = margins("overlap_tile_predict", batched_tiles, on_tf32)
    assert all(d < 0.2 for distances in found.values() for d in distances), found
