"""Notebook 03_unpooling: independent correct implementations earn every point, mistakes lose some.

Every test cell of an exercise (visible and hidden) runs against the implementation given, in a
namespace made by the notebook's setup cell (``checks.run_test_cells``), and is compared with the
recorded references in ``autograder/references/03_unpooling``.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segcourse import verify

sys.path.insert(0, str(Path(__file__).parent))
from checks import (  # noqa: E402
    assert_all_pass,
    assert_hidden_fails,
    run_test_cells,
    setup_namespace,
    solution_namespace,
)
from checks import test_cells as cell_sources  # noqa: E402

NB = "03_unpooling"


def _solution(grade_id):
    """The notebook's own solution, executed in a fresh setup namespace."""
    return solution_namespace(NB, grade_id)[grade_id]


def _all_pass(function, implementation):
    assert_all_pass(NB, function, implementation)


def _hidden_fails(function, implementation):
    assert_hidden_fails(NB, function, implementation)


def _not_implemented(*args, **kwargs):
    raise NotImplementedError()


FUNCTIONS = ["nearest_unpool", "bed_of_nails_unpool", "max_unpool2d", "SegNetDecoder"]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_solution_passes_and_blank_fails(function):
    _all_pass(function, _solution(function))
    if function == "SegNetDecoder":
        blank = type("SegNetDecoder", (_solution(function),), {"forward": _not_implemented})
    else:
        blank = _not_implemented
    outcome = run_test_cells(NB, function, blank)
    assert all(error is not None for error in outcome.values()), outcome


# --- nearest_unpool ---------------------------------------------------------------------------


def nearest_interpolate(x, scale):
    return F.interpolate(x, scale_factor=scale, mode="nearest")


def nearest_by_indexing(x, scale):
    rows = torch.arange(x.shape[-2] * scale, device=x.device) // scale
    cols = torch.arange(x.shape[-1] * scale, device=x.device) // scale
    return x[..., rows[:, None], cols[None, :]]


def nearest_kron(x, scale):
    block = torch.ones(scale, scale, dtype=x.dtype, device=x.device)
    n, c, h, w = x.shape
    return torch.kron(x.reshape(n * c, h, w), block).reshape(n, c, h * scale, w * scale)


def nearest_tiled(x, scale):
    """Mistake: tiles the whole map instead of repeating each value."""
    return x.repeat(1, 1, scale, scale)


@pytest.mark.parametrize("implementation", [nearest_interpolate, nearest_by_indexing, nearest_kron])
def test_nearest_unpool_independent_implementations_pass(implementation):
    _all_pass("nearest_unpool", implementation)


@pytest.mark.parametrize("mistake", [nearest_tiled])
def test_nearest_unpool_mistakes_fail(mistake):
    _hidden_fails("nearest_unpool", mistake)


# --- bed_of_nails_unpool ----------------------------------------------------------------------


def nails_by_max_unpool(x, scale):
    """F.max_unpool2d with indices that always point at the top-left corner of each block."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device)[:, None] * scale
    cols = torch.arange(w, device=x.device)[None, :] * scale
    indices = (rows * (w * scale) + cols).expand(n, c, h, w).contiguous()
    return F.max_unpool2d(x, indices, scale, scale, output_size=(h * scale, w * scale))


def nails_by_conv_transpose(x, scale):
    """A transposed convolution whose kernel is 1 at the top-left corner, applied per channel."""
    n, c, h, w = x.shape
    kernel = torch.zeros(c, 1, scale, scale, dtype=x.dtype, device=x.device)
    kernel[:, :, 0, 0] = 1
    return F.conv_transpose2d(x, kernel, stride=scale, groups=c)


def nails_bottom_right(x, scale):
    """Mistake: the value at the bottom-right corner of its block."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h * scale, w * scale)
    out[..., scale - 1 :: scale, scale - 1 :: scale] = x
    return out


def nails_centre(x, scale):
    """Mistake: the value at the centre of its block."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, h * scale, w * scale)
    out[..., scale // 2 :: scale, scale // 2 :: scale] = x
    return out


@pytest.mark.parametrize("implementation", [nails_by_max_unpool, nails_by_conv_transpose])
def test_bed_of_nails_independent_implementations_pass(implementation):
    _all_pass("bed_of_nails_unpool", implementation)


@pytest.mark.parametrize("mistake", [nails_bottom_right, nails_centre])
def test_bed_of_nails_mistakes_fail(mistake):
    _hidden_fails("bed_of_nails_unpool", mistake)


# --- max_unpool2d -----------------------------------------------------------------------------


def max_unpool_torch(x, indices, output_size):
    """PyTorch's own, with a kernel and stride whose default output size is output_size."""
    strides = tuple(max(1, size // pooled) for size, pooled in zip(output_size, x.shape[-2:]))
    kernels = tuple(
        size - (pooled - 1) * stride
        for size, pooled, stride in zip(output_size, x.shape[-2:], strides)
    )
    return F.max_unpool2d(x, indices, kernels, strides, output_size=output_size)


def max_unpool_loops(x, indices, output_size):
    """Plain loops over images, channels and values."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, output_size[0] * output_size[1], dtype=x.dtype, device=x.device)
    for i in range(n):
        for j in range(c):
            out[i, j, indices[i, j].flatten()] = x[i, j].flatten()
    return out.reshape(n, c, *output_size)


def max_unpool_index_put(x, indices, output_size):
    """Rows and columns from the flat index, then index_put_ on a 4D tensor."""
    n, c = x.shape[:2]
    height, width = output_size
    out = x.new_zeros(n, c, height, width)
    batch = torch.arange(n, device=x.device)[:, None, None, None].expand_as(indices)
    channel = torch.arange(c, device=x.device)[None, :, None, None].expand_as(indices)
    out.index_put_((batch, channel, indices // width, indices % width), x)
    return out


def max_unpool_per_batch(x, indices, output_size):
    """Mistake: treats the indices as positions in the whole (C, H, W) block of an image."""
    n = x.shape[0]
    height, width = output_size
    out = x.new_zeros(n, x.shape[1] * height * width)
    out.scatter_(1, indices.reshape(n, -1), x.reshape(n, -1))
    return out.reshape(n, x.shape[1], height, width)


def max_unpool_doubling(x, indices, output_size):
    """Mistake: ignores output_size and assumes the map was exactly twice the input."""
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, 4 * h * w)
    out.scatter_(2, indices.reshape(n, c, -1), x.reshape(n, c, -1))
    return out.reshape(n, c, 2 * h, 2 * w)


def max_unpool_rows_by_height(x, indices, output_size):
    """Mistake: splits the flat index with the height instead of the width."""
    n, c = x.shape[:2]
    height, width = output_size
    out = x.new_zeros(n, c, height, width)
    rows, cols = indices // height, indices % height
    inside = (rows < height) & (cols < width)
    batch = torch.arange(n)[:, None, None, None].expand_as(indices)
    channel = torch.arange(c)[None, :, None, None].expand_as(indices)
    out[batch[inside], channel[inside], rows[inside], cols[inside]] = x[inside]
    return out


@pytest.mark.parametrize(
    "implementation", [max_unpool_torch, max_unpool_loops, max_unpool_index_put]
)
def test_max_unpool2d_independent_implementations_pass(implementation):
    _all_pass("max_unpool2d", implementation)


@pytest.mark.parametrize(
    "mistake", [max_unpool_per_batch, max_unpool_doubling, max_unpool_rows_by_height]
)
def test_max_unpool2d_mistakes_fail(mistake):
    _hidden_fails("max_unpool2d", mistake)


# --- SegNetDecoder.forward --------------------------------------------------------------------


def _decoder_with(forward):
    base = _solution("SegNetDecoder")
    return type("SegNetDecoder", (base,), {"forward": forward})


def forward_loops(self, x, indices, sizes):
    """Correct, written differently: an explicit index from the deepest stage up, own unpooling."""
    for k, block in enumerate(self.blocks):
        stage = len(indices) - 1 - k
        n, c = x.shape[:2]
        height, width = sizes[stage]
        flat = x.new_zeros(n, c, height * width)
        flat.scatter_(2, indices[stage].flatten(2), x.flatten(2))
        x = block(flat.view(n, c, height, width))
    return self.classifier(x)


def forward_nearest(self, x, indices, sizes):
    """Mistake: nearest-neighbour upsampling, ignoring the indices."""
    for block, size in zip(self.blocks, reversed(sizes), strict=True):
        x = block(F.interpolate(x, size=size, mode="nearest"))
    return self.classifier(x)


def forward_bed_of_nails(self, x, indices, sizes):
    """Mistake: bed of nails, then padded or cut to the stored size."""
    for block, size in zip(self.blocks, reversed(sizes), strict=True):
        n, c, h, w = x.shape
        out = x.new_zeros(n, c, *size)
        out[..., : 2 * h : 2, : 2 * w : 2] = x
        x = block(out)
    return self.classifier(x)


def forward_without_output_size(self, x, indices, sizes):
    """Mistake: max unpooling without output_size (even sizes only)."""
    for block, stage_indices in zip(self.blocks, reversed(indices), strict=True):
        x = block(F.max_unpool2d(x, stage_indices, 2, 2))
    return self.classifier(x)


@pytest.mark.parametrize("forward", [forward_loops])
def test_segnet_decoder_independent_forward_passes(forward):
    _all_pass("SegNetDecoder", _decoder_with(forward))


@pytest.mark.parametrize(
    "forward", [forward_nearest, forward_bed_of_nails, forward_without_output_size]
)
def test_segnet_decoder_mistakes_fail(forward):
    _hidden_fails("SegNetDecoder", _decoder_with(forward))


# --- every hidden case has one right answer; mistakes fail by far more than any tolerance ------


def captured_outputs(function, implementation, grade_id):
    """check id -> list of (case, output) from running one test cell with ``implementation``.

    The cell's ``grading.check`` is replaced by one that runs the cases on the CPU and keeps
    the inputs and outputs (no comparison), so that the tests below can look at them.
    """
    from segcourse import grading

    captured = {}

    def check(check_id, fn, cases, **kwargs):
        outputs = []
        for case in cases:
            torch.manual_seed(kwargs.get("seed", 0))
            copy = grading._to_device(dict(case), torch.device("cpu"))
            outputs.append((case, fn(**copy).detach()))
        captured[check_id] = outputs

    fake = type("FakeGrading", (), {})()
    for name in ("randn", "rand", "randint", "seeded"):
        setattr(fake, name, getattr(grading, name))
    fake.check = check
    namespace = setup_namespace(NB)
    namespace.update(grading=fake, **{function: implementation})
    exec(compile(cell_sources(NB, function)[grade_id], f"{NB}:{grade_id}", "exec"), namespace)
    return captured


def cross_device_ratio(got, expected):
    """Largest |got - expected| over what the cross-device tolerance allows (verify.py's rule)."""
    tolerance = verify.DEFAULT_TOLERANCE
    scale = max(1.0, float(expected.abs().max()))
    allowed = tolerance["cross_device_atol"] * scale + tolerance["cross_device_rtol"] * expected.abs()
    return float(((got.double() - expected.double()).abs() / allowed.double()).max())


def max_unpool_reversed_writes(x, indices, output_size):
    """Correct, written in the opposite order: the last value of a plane is written first."""
    n, c = x.shape[:2]
    height, width = output_size
    out = x.new_zeros(n, c, height * width)
    out.scatter_(2, indices.reshape(n, c, -1).flip(-1), x.reshape(n, c, -1).flip(-1))
    return out.reshape(n, c, height, width)


def max_unpool_largest_wins(x, indices, output_size):
    """Correct, another rule for duplicates: the largest value wins (scatter_reduce amax)."""
    n, c = x.shape[:2]
    height, width = output_size
    out = torch.full((n, c, height * width), float("-inf"), dtype=x.dtype, device=x.device)
    out.scatter_reduce_(2, indices.reshape(n, c, -1), x.reshape(n, c, -1), reduce="amax")
    return out.masked_fill(out == float("-inf"), 0).reshape(n, c, height, width)


def max_unpool_accumulate(x, indices, output_size):
    """Mistake: adds values that share an index (what max pooling's gradient does) instead of
    writing one of them."""
    n, c = x.shape[:2]
    height, width = output_size
    out = x.new_zeros(n, c, height * width)
    out.scatter_add_(2, indices.reshape(n, c, -1), x.reshape(n, c, -1))
    return out.reshape(n, c, height, width)


def test_max_unpool2d_duplicate_indices_carry_equal_values():
    """Every case where two values of a plane share an index gives them the same value, so the
    answer does not depend on the write order; the overlapping cases do have duplicates."""
    duplicated_cases = 0
    for grade_id in ("test_max_unpool2d", "hidden_max_unpool2d"):
        for outputs in captured_outputs("max_unpool2d", _solution("max_unpool2d"), grade_id).values():
            for case, _ in outputs:
                x, indices = case["x"], case["indices"]
                n, c = x.shape[:2]
                flat_x, flat_i = x.reshape(n * c, -1), indices.reshape(n * c, -1)
                found = False
                for values, positions in zip(flat_x, flat_i, strict=True):
                    for position in positions.unique():
                        shared = values[positions == position]
                        assert torch.all(shared == shared[0]), (case.keys(), position)
                        found |= shared.numel() > 1
                duplicated_cases += found
    assert duplicated_cases >= 2, "the overlapping-window cases should have duplicate indices"


@pytest.mark.parametrize("implementation", [max_unpool_reversed_writes, max_unpool_largest_wins])
def test_max_unpool2d_any_write_order_passes(implementation):
    _all_pass("max_unpool2d", implementation)


def test_max_unpool2d_accumulating_duplicates_fails():
    _hidden_fails("max_unpool2d", max_unpool_accumulate)


def _round_to_tf32(tensor):
    """Round float32 values to TF32's 10 mantissa bits (what a GPU's convolutions may use)."""
    bits = tensor.float().contiguous().view(torch.int32)
    rounded = (bits + 0x1000) & ~0x1FFF
    return rounded.view(torch.float32)


def forward_like_tf32(self, x, indices, sizes):
    """Correct, with every convolution's inputs and weights rounded to TF32 precision: a stand-in
    for grading on a GPU."""
    for block, stage_indices, size in zip(self.blocks, reversed(indices), reversed(sizes), strict=True):
        x = F.max_unpool2d(x, stage_indices, 2, 2, output_size=size)
        conv, norm, relu = block
        x = F.conv2d(_round_to_tf32(x), _round_to_tf32(conv.weight), conv.bias, padding=1)
        x = relu(norm(x))
    classifier = self.classifier
    return F.conv2d(_round_to_tf32(x), _round_to_tf32(classifier.weight), classifier.bias)


CLOSE_CHECKS = {
    "nearest_unpool": [nearest_tiled],
    "bed_of_nails_unpool": [nails_bottom_right, nails_centre],
    "SegNetDecoder": [forward_nearest, forward_bed_of_nails],
}


@pytest.mark.parametrize(
    "function, mistake",
    [(function, mistake) for function, mistakes in CLOSE_CHECKS.items() for mistake in mistakes],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_mistakes_fail_far_beyond_the_cross_device_tolerance(function, mistake):
    """A mistake fails the hidden check even under the cross-device tolerance (a GPU grader),
    with room to spare: in some case its output is off by 100 times what that tolerance allows
    (cases where the mistake is harmless, scale 1 say, are allowed)."""
    solution = _solution(function)
    if function == "SegNetDecoder":
        mistake = _decoder_with(mistake)
    expected = captured_outputs(function, solution, f"hidden_{function}")
    got = captured_outputs(function, mistake, f"hidden_{function}")
    ratios = [
        cross_device_ratio(have, want)
        for check_id, outputs in expected.items()
        for (_, want), (_, have) in zip(outputs, got[check_id], strict=True)
        if have.shape == want.shape  # a wrong shape fails anyway
    ]
    assert ratios and max(ratios) > 100, ratios


def test_segnet_decoder_checks_hold_across_devices():
    """TF32-rounded convolutions (a GPU grader) stay well within the cross-device tolerance of
    the CPU references, and the logits are not just the classifier's bias: they spread."""
    for grade_id in ("test_SegNetDecoder", "hidden_SegNetDecoder"):
        expected = captured_outputs("SegNetDecoder", _solution("SegNetDecoder"), grade_id)
        got = captured_outputs("SegNetDecoder", _decoder_with(forward_like_tf32), grade_id)
        for check_id, outputs in expected.items():
            for (_, want), (_, have) in zip(outputs, got[check_id], strict=True):
                assert cross_device_ratio(have, want) < 0.5
                per_pixel_spread = want.std(dim=(-2, -1)).min()
                assert per_pixel_spread > 0.3, f"{check_id}: logits hardly vary over the pixels"

