"""06_deeplab: independent correct implementations pass every test cell; common mistakes fail.

The test cells (visible and hidden) run through ``checks.run_test_cells`` against the recorded
references, with the notebook's function or class replaced by the implementation under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

sys.path.insert(0, str(Path(__file__).parent))
from checks import run_test_cells, solution_namespace  # noqa: E402

NOTEBOOK = "06_deeplab"


def all_pass(outcome: dict) -> None:
    failures = {k: v for k, v in outcome.items() if v is not None}
    assert not failures, failures
    assert len(outcome) == 2, f"expected a visible and a hidden test cell, got {sorted(outcome)}"


def all_fail(outcome: dict) -> None:
    assert all(v is not None for v in outcome.values()), outcome


def some_fail(outcome: dict) -> None:
    assert any(v is not None for v in outcome.values()), "a wrong implementation passed every test"


def notebook_class(name: str, grade_id: str | None = None):
    """Execute the solution cell that defines ``name`` (its given ``__init__``) and return it."""
    namespace = solution_namespace(NOTEBOOK, grade_id or name)
    return namespace[name]


def with_forward(name: str, forward):
    cls = notebook_class(name)
    return type(name, (cls,), {"forward": forward})


def resize(x, size):
    """Bilinear, align_corners=False, through torchvision's resize (no antialiasing)."""
    return TF.resize(x, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=False)


# ---- dilate_kernel -------------------------------------------------------------------------


def impulse_dilate(weight, rate):
    """Read the dilated kernel off F.conv2d(dilation=rate) applied to unit impulses."""
    c_out, c_in, kh, kw = weight.shape
    size_h, size_w = kh + (kh - 1) * (rate - 1), kw + (kw - 1) * (rate - 1)
    impulses = torch.eye(c_in * size_h * size_w, dtype=weight.dtype)
    impulses = impulses.reshape(-1, c_in, size_h, size_w)  # one input per (channel, row, col)
    responses = F.conv2d(impulses, weight, dilation=rate)  # (c_in * h * w, c_out, 1, 1)
    return responses.reshape(c_in, size_h, size_w, c_out).permute(3, 0, 1, 2).contiguous()


def test_dilate_kernel_impulses_pass():
    all_pass(run_test_cells(NOTEBOOK, "dilate_kernel", impulse_dilate))


def test_dilate_kernel_rate_zeros_fails():
    def rate_zeros(weight, rate):  # rate zeros between taps instead of rate - 1
        if rate == 1:
            return weight.clone()
        return impulse_dilate(weight, rate + 1)

    some_fail(run_test_cells(NOTEBOOK, "dilate_kernel", rate_zeros))


def test_dilate_kernel_rows_only_fails():
    def rows_only(weight, rate):
        c_out, c_in, kh, kw = weight.shape
        out = weight.new_zeros(c_out, c_in, kh + (kh - 1) * (rate - 1), kw)
        out[..., ::rate, :] = weight
        return out

    all_fail(run_test_cells(NOTEBOOK, "dilate_kernel", rows_only))


# ---- separable_conv_mults ------------------------------------------------------------------


def counted_mults(h, w, c_in, c_out, k):
    """PyTorch's FLOP counter on meta tensors (shapes only), halved: multiply-adds."""
    counts = []
    with torch.device("meta"):
        x = torch.empty(1, c_in, h + k - 1, w + k - 1)
        layers = [(nn.Conv2d(c_in, c_out, k, bias=False), x),
                  (nn.Conv2d(c_in, c_in, k, groups=c_in, bias=False), x),
                  (nn.Conv2d(c_in, c_out, 1, bias=False), torch.empty(1, c_in, h, w))]
        for layer, inp in layers:
            with FlopCounterMode(display=False) as counter:
                layer(inp)
            counts.append(counter.get_total_flops() // 2)
    return tuple(counts)


def test_separable_conv_mults_flop_counter_passes():
    all_pass(run_test_cells(NOTEBOOK, "separable_conv_mults", counted_mults))


@pytest.mark.parametrize("wrong", [
    lambda h, w, c_in, c_out, k: (k * k * c_in * c_out, k * k * c_in, c_in * c_out),  # per location
    lambda h, w, c_in, c_out, k: (k * k * c_in * c_out * h * w, k * k * c_out * h * w, c_in * c_out * h * w),
    lambda h, w, c_in, c_out, k: {"standard": k * k * c_in * c_out * h * w},
])
def test_separable_conv_mults_mistakes_fail(wrong):
    all_fail(run_test_cells(NOTEBOOK, "separable_conv_mults", wrong))


# ---- DepthwiseSeparableConv ----------------------------------------------------------------


def conv_modules_forward(self, x):
    """Two nn.Conv2d modules loaded with the parameters."""
    c_in, _, k, _ = self.depthwise_weight.shape
    depthwise = nn.Conv2d(c_in, c_in, k, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, groups=c_in, bias=False).to(x.device)
    pointwise = nn.Conv2d(c_in, self.pointwise_weight.shape[0], 1,
                          bias=self.bias is not None).to(x.device)
    with torch.no_grad():
        depthwise.weight.copy_(self.depthwise_weight)
        pointwise.weight.copy_(self.pointwise_weight)
        if self.bias is not None:
            pointwise.bias.copy_(self.bias)
    return pointwise(depthwise(x))


def test_separable_conv_modules_pass():
    all_pass(run_test_cells(NOTEBOOK, "DepthwiseSeparableConv",
                            with_forward("DepthwiseSeparableConv", conv_modules_forward)))


def test_separable_conv_ignoring_dilation_fails():
    def no_dilation(self, x):
        y = F.conv2d(x, self.depthwise_weight, stride=self.stride, padding=self.padding,
                     groups=self.in_channels)
        return F.conv2d(y, self.pointwise_weight, self.bias)

    some_fail(run_test_cells(NOTEBOOK, "DepthwiseSeparableConv",
                             with_forward("DepthwiseSeparableConv", no_dilation)))


def test_separable_conv_without_bias_fails():
    def no_bias(self, x):
        y = F.conv2d(x, self.depthwise_weight, stride=self.stride, padding=self.padding,
                     dilation=self.dilation, groups=self.in_channels)
        return F.conv2d(y, self.pointwise_weight)

    all_fail(run_test_cells(NOTEBOOK, "DepthwiseSeparableConv",
                            with_forward("DepthwiseSeparableConv", no_bias)))


# ---- ASPP ----------------------------------------------------------------------------------


def test_aspp_torchvision_passes():
    """torchvision's own ASPP, built with the same seed, earns every point."""
    all_pass(run_test_cells(NOTEBOOK, "ASPP", TorchvisionASPP))


def test_aspp_without_image_pooling_fails():
    def no_pooling(self, x):
        outputs = [branch(x) for branch in self.convs[:-1]]
        outputs.append(torch.zeros_like(outputs[0]))  # the channels fit, the context is gone
        return self.project(torch.cat(outputs, dim=1))

    all_fail(run_test_cells(NOTEBOOK, "ASPP", with_forward("ASPP", no_pooling)))


def test_aspp_pooling_first_fails():
    def pooling_first(self, x):
        pooled = self.convs[-1](x).expand(-1, -1, *x.shape[-2:])
        outputs = [pooled] + [branch(x) for branch in self.convs[:-1]]
        return self.project(torch.cat(outputs, dim=1))

    all_fail(run_test_cells(NOTEBOOK, "ASPP", with_forward("ASPP", pooling_first)))


# ---- PyramidPooling ------------------------------------------------------------------------


def adaptive_average(x, bins):
    """Adaptive average pooling from its definition (bin i spans floor(iH/b) .. ceil((i+1)H/b))."""
    height, width = x.shape[-2:]
    rows = []
    for i in range(bins):
        top, bottom = (i * height) // bins, -((-(i + 1) * height) // bins)
        cols = []
        for j in range(bins):
            left, right = (j * width) // bins, -((-(j + 1) * width) // bins)
            cols.append(x[..., top:bottom, left:right].mean(dim=(-2, -1)))
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)  # (N, C, bins, bins)


def pyramid_forward(bins=None, upsample=resize, x_first=True):
    def forward(self, x):
        levels = []
        for b, stage in zip(bins or self.bins, self.stages, strict=True):
            levels.append(upsample(stage(adaptive_average(x, b)), x.shape[-2:]))
        levels = [x, *levels] if x_first else [*levels, x]
        return self.bottleneck(torch.cat(levels, dim=1))

    return forward


def test_pyramid_pooling_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "PyramidPooling",
                            with_forward("PyramidPooling", pyramid_forward())))


@pytest.mark.parametrize("forward", [
    pyramid_forward(upsample=lambda y, size: F.interpolate(y, size=size, mode="nearest")),
    pyramid_forward(upsample=lambda y, size: F.interpolate(y, size=size, mode="bilinear",
                                                           align_corners=True)),
    pyramid_forward(x_first=False),
], ids=["nearest", "align_corners", "order"])
def test_pyramid_pooling_mistakes_fail(forward):
    all_fail(run_test_cells(NOTEBOOK, "PyramidPooling", with_forward("PyramidPooling", forward)))


def test_pyramid_pooling_wrong_bins_fail():
    def wrong_bins(self, x):
        bins = tuple(2 * b for b in self.bins)  # e.g. 2, 4, 6, 12 instead of 1, 2, 3, 6
        return pyramid_forward(bins=bins)(self, x)

    all_fail(run_test_cells(NOTEBOOK, "PyramidPooling", with_forward("PyramidPooling", wrong_bins)))


# ---- DeepLabV3Plus -------------------------------------------------------------------------


def deeplab_forward(order="high_low", align_corners=False):
    def up(y, size):
        if align_corners:
            return F.interpolate(y, size=size, mode="bilinear", align_corners=True)
        return resize(y, size)

    def forward(self, x):
        low = self.layer1(self.stem(x))
        high = up(self.aspp(self.layer3(self.layer2(low))), low.shape[-2:])
        reduced = self.reduce(low)
        parts = [high, reduced] if order == "high_low" else [reduced, high]
        return up(self.classifier(self.decoder(torch.cat(parts, dim=1))), x.shape[-2:])

    return forward


def test_deeplab_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "DeepLabV3Plus",
                            with_forward("DeepLabV3Plus", deeplab_forward())))


@pytest.mark.parametrize("forward", [deeplab_forward(order="low_high"),
                                     deeplab_forward(align_corners=True)],
                         ids=["concat_order", "align_corners"])
def test_deeplab_mistakes_fail(forward):
    all_fail(run_test_cells(NOTEBOOK, "DeepLabV3Plus", with_forward("DeepLabV3Plus", forward)))
