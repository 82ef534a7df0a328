"""Notebook 02_fcn: independent correct implementations earn every point, common mistakes lose some.

Every test cell of an exercise (visible and hidden) runs against the implementation given, in a
namespace made by the notebook's setup cell (``checks.run_test_cells``), and is compared with the
recorded references in ``autograder/references/02_fcn``.
"""

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from checks import (  # noqa: E402
    REPO,
    assert_all_pass,
    assert_hidden_fails,
    run_test_cells,
    solution_namespace,
)

from segcourse import grading  # noqa: E402
from segcourse.verify import DEFAULT_TOLERANCE, load_reference  # noqa: E402

NB = "02_fcn"


def _solution(grade_id):
    """The notebook's own solution, executed in a fresh setup namespace."""
    return solution_namespace(NB, grade_id)[grade_id]


def _all_pass(function, implementation):
    assert_all_pass(NB, function, implementation)


def _hidden_fails(function, implementation):
    assert_hidden_fails(NB, function, implementation)


def _not_implemented(*args, **kwargs):
    raise NotImplementedError()


# --- the notebook's own solutions and the blank exercise ------------------------------------


@pytest.mark.parametrize("function", ["fc_to_conv", "receptive_field", "bilinear_kernel", "FCN"])
def test_solution_passes_and_blank_fails(function):
    _all_pass(function, _solution(function))
    if function == "FCN":
        blank = type("FCN", (_solution("FCN"),), {"forward": _not_implemented})
    else:
        blank = _not_implemented
    outcome = run_test_cells(NB, function, blank)
    assert all(error is not None for error in outcome.values()), outcome


# --- fc_to_conv -------------------------------------------------------------------------------


def _conv_like(linear, in_channels, kernel_size, weight):
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, bias=linear.bias is not None)
    conv = conv.to(linear.weight)  # the linear layer's dtype and device
    with torch.no_grad():
        conv.weight.copy_(weight)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def fc_to_conv_by_probing(linear, in_channels, kernel_size):
    """Read the weight off the layer's responses to one-hot feature maps."""
    size = in_channels * kernel_size**2
    basis = torch.eye(size, dtype=linear.weight.dtype, device=linear.weight.device)
    basis = basis.reshape(size, in_channels, kernel_size, kernel_size)
    with torch.no_grad():
        responses = F.linear(basis.flatten(1), linear.weight)  # (size, out): column per input
    weight = responses.T.reshape(linear.out_features, in_channels, kernel_size, kernel_size)
    return _conv_like(linear, in_channels, kernel_size, weight)


def fc_to_conv_unflatten(linear, in_channels, kernel_size):
    weight = linear.weight.detach().unflatten(1, (in_channels, kernel_size, kernel_size))
    return _conv_like(linear, in_channels, kernel_size, weight)


def fc_to_conv_channels_last(linear, in_channels, kernel_size):
    """Mistake: reads the flattened input as (row, column, channel)."""
    weight = (
        linear.weight.detach()
        .reshape(linear.out_features, kernel_size, kernel_size, in_channels)
        .permute(0, 3, 1, 2)
    )
    return _conv_like(linear, in_channels, kernel_size, weight)


def fc_to_conv_no_bias(linear, in_channels, kernel_size):
    """Mistake: forgets the bias."""
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, bias=False)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
    return conv


def fc_to_conv_transposed_weight(linear, in_channels, kernel_size):
    """Mistake: reshapes the transposed weight matrix (in_features, out_features)."""
    weight = linear.weight.detach().T.reshape(
        linear.out_features, in_channels, kernel_size, kernel_size
    )
    return _conv_like(linear, in_channels, kernel_size, weight)


@pytest.mark.parametrize("implementation", [fc_to_conv_by_probing, fc_to_conv_unflatten])
def test_fc_to_conv_independent_implementations_pass(implementation):
    _all_pass("fc_to_conv", implementation)


@pytest.mark.parametrize(
    "mistake", [fc_to_conv_channels_last, fc_to_conv_no_bias, fc_to_conv_transposed_weight]
)
def test_fc_to_conv_mistakes_fail(mistake):
    _hidden_fails("fc_to_conv", mistake)


def fc_to_conv_default_dtype(linear, in_channels, kernel_size):
    """Mistake: a float32 CPU convolution whatever the linear layer's dtype and device."""
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def test_fc_to_conv_keeps_dtype_and_device():
    """The docstring's promise: the convolution has the dtype and the device of ``linear``."""
    fc_to_conv = _solution("fc_to_conv")
    linear = nn.Linear(3 * 2 * 2, 5).double()
    conv = fc_to_conv(linear, 3, 2)
    assert conv.weight.dtype == conv.bias.dtype == torch.float64
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = F.conv2d(x, linear.weight.reshape(5, 3, 2, 2), linear.bias)
    torch.testing.assert_close(conv(x), expected)
    with torch.device("meta"):  # another device, without a GPU
        on_meta = nn.Linear(3 * 2 * 2, 5, bias=False)
    converted = fc_to_conv(on_meta, 3, 2)
    assert converted.weight.device.type == "meta" and converted.bias is None
    half = fc_to_conv(nn.Linear(8, 2).to(torch.bfloat16), 8, 1)
    assert half.weight.dtype == half.bias.dtype == torch.bfloat16


def test_fc_to_conv_losing_dtype_fails_visible_and_hidden():
    outcome = run_test_cells(NB, "fc_to_conv", fc_to_conv_default_dtype)
    assert outcome["test_fc_to_conv"] is not None and outcome["hidden_fc_to_conv"] is not None


# --- receptive_field --------------------------------------------------------------------------


def receptive_field_backwards(layers):
    """From the output back to the input: r_in = s * r_out + (effective kernel - s)."""
    field = 1
    for layer in reversed(layers):
        kernel, stride, dilation = (*layer, 1)[:3]
        field = stride * field + (dilation * (kernel - 1) + 1 - stride)
    return field


def receptive_field_measured(layers):
    """Measure it with autograd on a 1D all-ones network, as the notebook's check does."""
    signal = torch.zeros(1, 1, 4096, requires_grad=True)
    h = signal
    for layer in layers:
        kernel, stride, dilation = (*layer, 1)[:3]
        h = F.conv1d(h, torch.ones(1, 1, kernel), stride=stride, dilation=dilation)
    h[0, 0, 0].backward()
    reached = torch.nonzero(signal.grad[0, 0]).flatten()
    return int(reached.max() - reached.min() + 1)


def receptive_field_ignoring_stride(layers):
    """Mistake: adds (k - 1) * d per layer, as if every stride were 1."""
    return 1 + sum((layer[0] - 1) * (layer[2] if len(layer) > 2 else 1) for layer in layers)


def receptive_field_ignoring_dilation(layers):
    """Mistake: treats dilated kernels as dense ones."""
    field, jump = 1, 1
    for layer in layers:
        field += (layer[0] - 1) * jump
        jump *= layer[1]
    return field


@pytest.mark.parametrize("implementation", [receptive_field_backwards, receptive_field_measured])
def test_receptive_field_independent_implementations_pass(implementation):
    _all_pass("receptive_field", implementation)


@pytest.mark.parametrize(
    "mistake", [receptive_field_ignoring_stride, receptive_field_ignoring_dilation]
)
def test_receptive_field_mistakes_fail(mistake):
    _hidden_fails("receptive_field", mistake)


# --- bilinear_kernel --------------------------------------------------------------------------


def bilinear_kernel_fcn_numpy(in_channels, out_channels, kernel_size):
    """A port of the FCN code's surgery.upsample_filt with numpy's ogrid."""
    factor = (kernel_size + 1) // 2
    centre = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - centre) / factor) * (1 - abs(og[1] - centre) / factor)
    weight = np.zeros((in_channels, out_channels, kernel_size, kernel_size), dtype=np.float32)
    diagonal = range(min(in_channels, out_channels))
    weight[diagonal, diagonal, :, :] = filt
    return torch.from_numpy(weight)


def bilinear_kernel_symmetric(in_channels, out_channels, kernel_size):
    """The tent written around the kernel's middle, (k - 1) / 2, for odd and even k alike."""
    factor = (kernel_size + 1) // 2
    taps = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    tent = torch.clamp(1 - taps.abs() / factor, min=0).float()
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = torch.outer(tent, tent)
    return weight


def bilinear_kernel_off_centre(in_channels, out_channels, kernel_size):
    """Mistake: centre at k // 2, half a pixel off for even kernel sizes."""
    factor = (kernel_size + 1) // 2
    tent = 1 - (torch.arange(kernel_size) - kernel_size // 2).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = torch.outer(tent, tent)
    return weight


def bilinear_kernel_all_channels(in_channels, out_channels, kernel_size):
    """Mistake: the filter in every (in, out) pair, mixing the classes."""
    one = bilinear_kernel_fcn_numpy(1, 1, kernel_size)
    return one.expand(in_channels, out_channels, kernel_size, kernel_size).clone()


def bilinear_kernel_half_size_factor(in_channels, out_channels, kernel_size):
    """Mistake: factor = k / 2 for odd kernel sizes too."""
    factor = kernel_size / 2
    tent = 1 - (torch.arange(kernel_size) - (kernel_size - 1) / 2).abs() / factor
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = torch.outer(tent, tent)
    return weight


@pytest.mark.parametrize("implementation", [bilinear_kernel_fcn_numpy, bilinear_kernel_symmetric])
def test_bilinear_kernel_independent_implementations_pass(implementation):
    _all_pass("bilinear_kernel", implementation)


@pytest.mark.parametrize(
    "mistake",
    [bilinear_kernel_off_centre, bilinear_kernel_all_channels, bilinear_kernel_half_size_factor],
)
def test_bilinear_kernel_mistakes_fail(mistake):
    _hidden_fails("bilinear_kernel", mistake)


def test_bilinear_kernel_is_interpolation_inside():
    """The notebook's claim, checked with the independent implementation."""
    scores = torch.rand(1, 2, 6, 5, generator=torch.Generator().manual_seed(0))
    for factor in (2, 3, 4, 5):
        size, padding = 2 * factor - factor % 2, factor // 2
        weight = bilinear_kernel_fcn_numpy(2, 2, size)
        up = F.conv_transpose2d(scores, weight, stride=factor, padding=padding)
        ref = F.interpolate(scores, scale_factor=factor, mode="bilinear", align_corners=False)
        assert torch.allclose(
            up[..., padding:-padding, padding:-padding],
            ref[..., padding:-padding, padding:-padding],
            atol=1e-6,
        )


# --- FCN.forward ------------------------------------------------------------------------------


def _fcn_with(forward):
    base = _solution("FCN")
    return type("FCN", (base,), {"forward": forward})


def forward_with_narrow(self, x):
    """Correct, written differently: a table of skips, torch.narrow for the crops."""
    height, width = x.shape[2], x.shape[3]
    features, y = {}, x
    for level, stage in enumerate(self.stages, start=1):
        y = stage(y)
        features[level] = y
    score = self.score_fr(self.fc(y))
    skips = {
        "32s": [],
        "16s": [("upscore2", "score_pool4", 4)],
        "8s": [("upscore2", "score_pool4", 4), ("upscore_pool4", "score_pool3", 3)],
    }
    for up, scorer, level in skips[self.variant]:
        skip = getattr(self, scorer)(features[level])
        upsampled = getattr(self, up)(score)
        score = upsampled.narrow(2, 0, skip.shape[2]).narrow(3, 0, skip.shape[3]) + skip
    final = {"32s": "upscore32", "16s": "upscore16", "8s": "upscore8"}[self.variant]
    return getattr(self, final)(score).narrow(2, 0, height).narrow(3, 0, width)


def forward_functional(self, x):
    """Correct: the transposed convolutions called through F with the modules' weights."""
    height, width = x.shape[-2:]
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[-1]))

    def up(module, t):
        return F.conv_transpose2d(t, module.weight, stride=module.stride, padding=module.padding)

    if self.variant == "32s":
        out = up(self.upscore32, score)
    else:
        s4 = self.score_pool4(pools[3])
        fused = up(self.upscore2, score)[:, :, : s4.shape[2], : s4.shape[3]] + s4
        if self.variant == "16s":
            out = up(self.upscore16, fused)
        else:
            s3 = self.score_pool3(pools[2])
            fused = up(self.upscore_pool4, fused)[:, :, : s3.shape[2], : s3.shape[3]] + s3
            out = up(self.upscore8, fused)
    return out[:, :, :height, :width]


def forward_interpolate_skips(self, x):
    """Mistake: resizes with F.interpolate to the skip's size instead of upscore2/upscore_pool4."""
    height, width = x.shape[-2:]
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[-1]))
    if self.variant == "32s":
        return self.upscore32(score)[..., :height, :width]
    s4 = self.score_pool4(pools[3])
    fused = F.interpolate(score, size=s4.shape[-2:], mode="bilinear") + s4
    if self.variant == "16s":
        return self.upscore16(fused)[..., :height, :width]
    s3 = self.score_pool3(pools[2])
    fused = F.interpolate(fused, size=s3.shape[-2:], mode="bilinear") + s3
    return self.upscore8(fused)[..., :height, :width]


def forward_centre_crop(self, x):
    """Mistake: crops every map around its centre instead of at the top-left corner."""

    def crop(t, h, w):
        top, left = (t.shape[-2] - h) // 2, (t.shape[-1] - w) // 2
        return t[..., top : top + h, left : left + w]

    height, width = x.shape[-2:]
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[-1]))
    if self.variant == "32s":
        return crop(self.upscore32(score), height, width)
    s4 = self.score_pool4(pools[3])
    fused = crop(self.upscore2(score), *s4.shape[-2:]) + s4
    if self.variant == "16s":
        return crop(self.upscore16(fused), height, width)
    s3 = self.score_pool3(pools[2])
    fused = crop(self.upscore_pool4(fused), *s3.shape[-2:]) + s3
    return crop(self.upscore8(fused), height, width)


def forward_without_pool3(self, x):
    """Mistake: FCN-8s without the pool3 skip (upsampled x2 and x8, nothing added)."""
    height, width = x.shape[-2:]
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[-1]))
    if self.variant == "32s":
        return self.upscore32(score)[..., :height, :width]
    s4 = self.score_pool4(pools[3])
    fused = self.upscore2(score)[..., : s4.shape[-2], : s4.shape[-1]] + s4
    if self.variant == "16s":
        return self.upscore16(fused)[..., :height, :width]
    return self.upscore8(self.upscore_pool4(fused))[..., :height, :width]


def forward_interpolate_output(self, x):
    """Mistake: the last upsampling by F.interpolate to the input size, not the module."""
    height, width = x.shape[-2:]
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[-1]))
    if self.variant != "32s":
        s4 = self.score_pool4(pools[3])
        score = self.upscore2(score)[..., : s4.shape[-2], : s4.shape[-1]] + s4
    if self.variant == "8s":
        s3 = self.score_pool3(pools[2])
        score = self.upscore_pool4(score)[..., : s3.shape[-2], : s3.shape[-1]] + s3
    return F.interpolate(score, size=(height, width), mode="bilinear")


def forward_no_final_crop(self, x):
    """Mistake: returns the upsampled map without cutting it to the input size."""
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[-1]))
    if self.variant == "32s":
        return self.upscore32(score)
    s4 = self.score_pool4(pools[3])
    fused = self.upscore2(score)[..., : s4.shape[-2], : s4.shape[-1]] + s4
    if self.variant == "16s":
        return self.upscore16(fused)
    s3 = self.score_pool3(pools[2])
    return self.upscore8(self.upscore_pool4(fused)[..., : s3.shape[-2], : s3.shape[-1]] + s3)


@pytest.mark.parametrize("forward", [forward_with_narrow, forward_functional])
def test_fcn_independent_forwards_pass(forward):
    _all_pass("FCN", _fcn_with(forward))


@pytest.mark.parametrize(
    "forward",
    [
        forward_interpolate_skips,
        forward_centre_crop,
        forward_without_pool3,
        forward_interpolate_output,
        forward_no_final_crop,
    ],
)
def test_fcn_mistakes_fail(forward):
    _hidden_fails("FCN", _fcn_with(forward))


# --- FCN.forward: more mistakes, and their distance from the reference -----------------------


def _forward_with(self, x, crop, upsample, pool4=1.0, pool3=1.0):
    """FCN.forward with the crop, the upsampling and the skip weights swapped for others."""
    height, width = x.shape[-2:]
    pools = []
    for stage in self.stages:
        x = stage(x)
        pools.append(x)
    score = self.score_fr(self.fc(pools[4]))
    if self.variant == "32s":
        return crop(upsample(self.upscore32, score, (height, width)), height, width)
    s4 = self.score_pool4(pools[3])
    fused = crop(upsample(self.upscore2, score, s4.shape[-2:]), *s4.shape[-2:]) + pool4 * s4
    if self.variant == "16s":
        return crop(upsample(self.upscore16, fused, (height, width)), height, width)
    s3 = self.score_pool3(pools[2])
    fused = crop(upsample(self.upscore_pool4, fused, s3.shape[-2:]), *s3.shape[-2:]) + pool3 * s3
    return crop(upsample(self.upscore8, fused, (height, width)), height, width)


def _top_left(t, height, width):
    return t[..., :height, :width]


def _bottom_right(t, height, width):
    return t[..., t.shape[-2] - height :, t.shape[-1] - width :]


def _module(module, t, size):
    return module(t)


def _interpolate(mode, align_corners=None):
    def upsample(module, t, size):
        return F.interpolate(t, size=tuple(size), mode=mode, align_corners=align_corners)

    return upsample


def forward_skips_scaled(self, x):
    """Mistake: Caffe's FCN-at-once scaling (pool4 scores x 0.01, pool3 x 0.0001) copied in."""
    return _forward_with(self, x, _top_left, _module, pool4=0.01, pool3=1e-4)


def forward_without_pool4(self, x):
    """Mistake: FCN-16s / 8s without the pool4 skip."""
    return _forward_with(self, x, _top_left, _module, pool4=0.0)


def forward_crop_bottom_right(self, x):
    """Mistake: keeps the bottom-right corner (cuts the top and left) when cropping."""
    return _forward_with(self, x, _bottom_right, _module)


def forward_align_corners(self, x):
    """Mistake: F.interpolate(bilinear, align_corners=True) instead of the upscore layers."""
    return _forward_with(self, x, _top_left, _interpolate("bilinear", True))


def forward_bilinear_interpolate(self, x):
    """Mistake: F.interpolate(bilinear) instead of the (learnable) upscore layers."""
    return _forward_with(self, x, _top_left, _interpolate("bilinear", False))


def forward_nearest(self, x):
    """Mistake: nearest-neighbour F.interpolate instead of the upscore layers."""
    return _forward_with(self, x, _top_left, _interpolate("nearest"))


FCN_MISTAKES = [
    forward_interpolate_skips,
    forward_centre_crop,
    forward_without_pool3,
    forward_interpolate_output,
    forward_no_final_crop,
    forward_skips_scaled,
    forward_without_pool4,
    forward_crop_bottom_right,
    forward_align_corners,
    forward_bilinear_interpolate,
    forward_nearest,
]
CROSS_DEVICE = (DEFAULT_TOLERANCE["cross_device_atol"], DEFAULT_TOLERANCE["cross_device_rtol"])


@pytest.mark.parametrize(
    "forward",
    [
        forward_skips_scaled,
        forward_without_pool4,
        forward_crop_bottom_right,
        forward_align_corners,
        forward_bilinear_interpolate,
        forward_nearest,
    ],
)
def test_fcn_more_mistakes_fail(forward):
    _hidden_fails("FCN", _fcn_with(forward))


class _CapturingGrading:
    """Stands in for ``grading`` in a test cell: runs each check's cases and keeps the outputs."""

    def __init__(self, transform=None):
        self.outputs = {}
        self.transform = transform  # applied to each case's arguments before the call

    def __getattr__(self, name):
        return getattr(grading, name)

    def check(self, check_id, fn, cases, **options):
        if self.transform is not None:
            wrapped = fn

            def fn(**case):
                return wrapped(**self.transform(case))

        self.outputs[check_id] = grading._run_cases(
            fn, cases, torch.device("cpu"), options.get("seed", 0)
        )


def _times_tolerance(got, expected):
    """How many cross-device tolerances the worst element is off (inf: another shape)."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return math.inf
    atol, rtol = CROSS_DEVICE
    g, e = got.double(), expected.double()
    allowed = atol * max(1.0, float(e.abs().max())) + rtol * e.abs()
    return float(((g - e).abs() / allowed).max())


def _distances(implementation, transform=None):
    """check id -> per case, the distance from the recorded reference in cross-device tolerances."""
    grader = _CapturingGrading(transform)
    run_test_cells(NB, "FCN", implementation, extra={"grading": grader})
    distances = {}
    for check_id, outputs in grader.outputs.items():
        reference, _ = load_reference(check_id, REPO / "autograder" / "references")
        distances[check_id] = [
            _times_tolerance(got, expected)
            for got, expected in zip(outputs, reference["outputs"], strict=True)
        ]
    return distances


@pytest.mark.parametrize("forward", FCN_MISTAKES, ids=lambda f: f.__name__)
def test_fcn_mistakes_are_far_beyond_the_cross_device_tolerance(forward):
    """Each mistake misses the hidden reference by more than 10 cross-device tolerances (a GPU
    grader's), so no device difference can hide it; the seeded logits alone (about 0.01 with
    PyTorch's default initialisation) once left several within 3 to 10 tolerances."""
    hidden = _distances(_fcn_with(forward))["02_fcn.FCN.hidden"]
    assert max(hidden) > 10, hidden


def test_fcn_solution_matches_and_tf32_round_off_stays_well_inside():
    """The solution is at distance 0 from its references; with every convolution's inputs and
    weights rounded to TF32 (10 mantissa bits, what a GPU's cuDNN uses by default) it stays
    within a fifth of the cross-device tolerance."""
    solution = _solution("FCN")
    exact = _distances(solution)
    assert set(exact) == {"02_fcn.FCN", "02_fcn.FCN.hidden"}
    assert all(d < 0.01 for distances in exact.values() for d in distances), exact

    def tf32(t):
        bits = t.float().contiguous().view(torch.int32)
        return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # round to 10 mantissa bits

    class RoundedFCN(solution):
        def forward(self, x):
            model = copy.deepcopy(self)
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    module.weight.copy_(tf32(module.weight))
                    module.register_forward_pre_hook(lambda module, args: (tf32(args[0]),))
            return solution.forward(model, x)

    with torch.no_grad():
        rounded = _distances(RoundedFCN)
    assert all(d < 0.2 for distances in rounded.values() for d in distances), rounded
    assert max(max(d) for d in rounded.values()) > 0  # the rounding did change something
