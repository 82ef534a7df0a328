"""06_deeplab: independent correct implementations pass every test cell; common mistakes fail.

The test cells (visible and hidden) run through ``checks.run_test_cells`` against the recorded
references, with the notebook's function or class replaced by the implementation under test.
"""

from __future__ import annotations

import ast
import math
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
from checks import REPO, run_test_cells, setup_namespace, solution_namespace  # noqa: E402
from checks import test_cells as graded_test_cells  # noqa: E402 (not collected by pytest)

from segcourse import grading  # noqa: E402
from segcourse.verify import load_reference, tolerance_for  # noqa: E402

NOTEBOOK = "06_deeplab"
REFERENCES = REPO / "autograder" / "references"


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

    all_fail(run_test_cells(NOTEBOOK, "DepthwiseSeparableConv",
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


def pyramid_forward(bins=None, upsample=resize, x_first=True, pool=adaptive_average):
    """An independent pyramid pooling forward; ``bins`` ("doubled", "reversed") and the other
    arguments make common mistakes."""
    def forward(self, x):
        levels, used = [], self.bins
        if bins == "doubled":
            used = tuple(2 * b for b in self.bins)  # e.g. 2, 4, 6, 12 instead of 1, 2, 3, 6
        elif bins == "reversed":
            used = self.bins[::-1]
        for b, stage in zip(used, self.stages, strict=True):
            levels.append(upsample(stage(pool(x, b)), x.shape[-2:]))
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
    all_fail(run_test_cells(NOTEBOOK, "PyramidPooling",
                            with_forward("PyramidPooling", pyramid_forward(bins="doubled"))))


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


# ---- margins: every mistake lands far outside the cross-device tolerance --------------------
#
# A GPU grader compares a CPU reference with the looser cross-device tolerance
# (segcourse.verify.tolerance_for). A check tells right from wrong on any device only if each
# common mistake moves the output far beyond it: here, in every check (visible and hidden), at
# least one case's worst element is off by more than MARGIN times what that tolerance allows.
# (With fresh batch-norm statistics DeepLabV3Plus's seeded logits were almost the classifier
# bias: a forward returning only the bias was within 3.4e-4 of the reference.)

MARGIN = 10.0


class _MarginGrading:
    """Stands in for ``segcourse.grading`` in a test cell: ``check`` runs the cases and records,
    per case, the largest ratio |got - expected| / (cross-device allowance) against the
    recorded reference instead of passing or failing."""

    def __init__(self, margins: dict):
        self._margins = margins

    def __getattr__(self, name):
        return getattr(grading, name)

    def check(self, check_id, fn, cases, *, compare="close", tolerance=None, seed=0, device=None):
        reference, entry = load_reference(check_id, REFERENCES)
        assert reference["inputs_sha256"] == grading._fingerprint(cases), (
            f"{check_id}: the test cell's inputs differ from the recorded reference's")
        tol = tolerance_for(entry["device"], "cuda:0 (another device)", entry.get("tolerance"))
        outputs = grading._run_cases(fn, cases, torch.device("cpu"), seed)
        self._margins[check_id] = [_margin(got, expected, tol)
                                   for got, expected in zip(outputs, reference["outputs"], strict=True)]


def _margin(got, expected, tol) -> float:
    """max |got - expected| / allowed (inf for a wrong shape or type), as verify.compare allows."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return math.inf
    g, e = got.double(), expected.double()
    scale = max(1.0, float(e.abs().max()))
    allowed = tol.atol * scale + tol.rtol * e.abs()
    return float(((g - e).abs() / allowed).max())


class _DropAsserts(ast.NodeTransformer):
    def visit_Assert(self, node):  # the teaching asserts would stop the cell before its check
        return None


def cross_device_margins(function: str, implementation) -> dict[str, list[float]]:
    """check id -> per-case margins of ``implementation`` in the test cells of ``function``."""
    margins: dict[str, list[float]] = {}
    for grade_id, source in graded_test_cells(NOTEBOOK, function).items():
        namespace = setup_namespace(NOTEBOOK)
        namespace[function] = implementation
        namespace["grading"] = _MarginGrading(margins)
        tree = ast.fix_missing_locations(_DropAsserts().visit(ast.parse(source)))
        exec(compile(tree, f"{NOTEBOOK}:{grade_id}", "exec"), namespace)
    assert len(margins) == 2, f"expected a visible and a hidden check, got {sorted(margins)}"
    return margins


def assert_far_beyond_tolerance(function: str, implementation) -> None:
    margins = cross_device_margins(function, implementation)
    close = {check_id: [round(m, 1) for m in per_case] for check_id, per_case in margins.items()
             if max(per_case) <= MARGIN}
    assert not close, f"within {MARGIN:g}x the cross-device tolerance in every case: {close}"


def assert_within_tolerance(function: str, implementation) -> None:
    margins = cross_device_margins(function, implementation)
    assert all(max(per_case) <= 1.0 for per_case in margins.values()), margins


def aspp_forward(upsample=resize, rates_reversed=False, pooling="avg", pooling_last=True,
                 no_pooling=False):
    def forward(self, x):
        branches = list(self.convs[:-1])
        if rates_reversed:
            branches = [branches[0], *reversed(branches[1:])]
        outputs = [branch(x) for branch in branches]
        image_pooling = self.convs[-1]
        if pooling == "max":
            image_pooling = nn.Sequential(nn.AdaptiveMaxPool2d(1), *image_pooling[1:])
        pooled = upsample(image_pooling(x), x.shape[-2:])
        if no_pooling:
            pooled = torch.zeros_like(pooled)
        outputs = [*outputs, pooled] if pooling_last else [pooled, *outputs]
        return self.project(torch.cat(outputs, dim=1))

    return forward


def test_margins_solution_is_within_tolerance():
    for name in ("DepthwiseSeparableConv", "ASPP", "PyramidPooling", "DeepLabV3Plus"):
        assert_within_tolerance(name, notebook_class(name))


def test_aspp_any_upsampling_of_the_pooled_vector_passes():
    """Bilinear, nearest and a plain expand repeat a 1 x 1 map identically: all are right."""
    for upsample in (lambda y, size: y.expand(-1, -1, *size),
                     lambda y, size: F.interpolate(y, size=size, mode="nearest")):
        all_pass(run_test_cells(NOTEBOOK, "ASPP", with_forward("ASPP", aspp_forward(upsample))))


def _deeplab_only_bias(self, x):
    logits = deeplab_forward()(self, x)
    return self.classifier.bias[None, :, None, None].expand_as(logits).clone()


def _deeplab_nearest(self, x):
    def up(y, size):
        return F.interpolate(y, size=size, mode="nearest")

    low = self.layer1(self.stem(x))
    high = up(self.aspp(self.layer3(self.layer2(low))), low.shape[-2:])
    return up(self.classifier(self.decoder(torch.cat([high, self.reduce(low)], dim=1))), x.shape[-2:])


def _separable_groups_one(self, x):
    """groups=1 with the depthwise filters repeated over the input channels (each filter then
    sums every channel)."""
    c_in = self.depthwise_weight.shape[0]
    weight = self.depthwise_weight.expand(-1, c_in, -1, -1)
    y = F.conv2d(x, weight, stride=self.stride, padding=self.padding, dilation=self.dilation)
    return F.conv2d(y, self.pointwise_weight, self.bias)


MISTAKES = {
    "DeepLabV3Plus": {
        "only_bias": _deeplab_only_bias,
        "concat_order": deeplab_forward(order="low_high"),
        "align_corners": deeplab_forward(align_corners=True),
        "nearest": _deeplab_nearest,
    },
    "ASPP": {
        "no_image_pooling": aspp_forward(no_pooling=True),
        "rates_reversed": aspp_forward(rates_reversed=True),
        "image_pooling_max": aspp_forward(pooling="max"),
        "image_pooling_first": aspp_forward(pooling_last=False),
    },
    "PyramidPooling": {
        "bins_doubled": pyramid_forward(bins="doubled"),
        "bins_reversed": pyramid_forward(bins="reversed"),
        "max_pooling": pyramid_forward(pool=lambda x, b: F.adaptive_max_pool2d(x, b)),
        "x_last": pyramid_forward(x_first=False),
        "nearest": pyramid_forward(upsample=lambda y, size: F.interpolate(y, size=size, mode="nearest")),
        "align_corners": pyramid_forward(upsample=lambda y, size: F.interpolate(
            y, size=size, mode="bilinear", align_corners=True)),
    },
    "DepthwiseSeparableConv": {
        "groups_one": _separable_groups_one,
        "no_bias": lambda self, x: F.conv2d(F.conv2d(
            x, self.depthwise_weight, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.in_channels), self.pointwise_weight),
        "no_dilation": lambda self, x: F.conv2d(F.conv2d(
            x, self.depthwise_weight, stride=self.stride, padding=self.padding,
            groups=self.in_channels), self.pointwise_weight, self.bias),
    },
}


@pytest.mark.parametrize(("function", "mistake"),
                         [(f, m) for f, table in MISTAKES.items() for m in table])
def test_mistake_far_beyond_cross_device_tolerance(function, mistake):
    forward = MISTAKES[function][mistake]
    assert_far_beyond_tolerance(function, with_forward(function, forward))
    all_fail(run_test_cells(NOTEBOOK, function, with_forward(function, forward)))


# ---- the notebook's text and explorer ------------------------------------------------------


def _notebook_sources(kind: str) -> list[str]:
    from checks import notebook_cells

    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in notebook_cells(NOTEBOOK) if c["cell_type"] == kind]


def test_explorer_sets_its_output_directly():
    """widgets.interact hung unattended runs; the explorer writes into an Output from observe
    callbacks and draws its first figure directly, as 02-04's do."""
    code = "\n".join(_notebook_sources("code"))
    assert "widgets.interact(" not in code and "interactive_output(" not in code
    assert ".observe(render" in code and "view.append_display_data" in code


def test_pair_counts_in_the_text():
    """The CRF's pairs: N (N - 1) / 2 unordered pairs i < j, not the N^2 of the dense matrix."""
    from segcourse.crf import pair_count

    text = "\n".join(_notebook_sources("markdown"))
    counts = pair_count(64, 64)
    assert f"{counts['unordered']:,}" in text  # 8,386,560
    assert "16.8 million pairs" not in text
    assert "hybrid\" rates" not in text and "'hybrid' rates" not in text
