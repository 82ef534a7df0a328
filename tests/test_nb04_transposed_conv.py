"""Notebook 04's test cells: independent correct implementations earn every point, and each
common mistake fails a test cell (its hidden one included) with a message that says what differs.

The test cells (visible and hidden) are run by ``checks.run_test_cells`` against the references
in ``autograder/references/04_transposed_conv`` (recorded by ``segcourse references``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `checks`, however pytest is run

from checks import run_test_cells  # noqa: E402

NOTEBOOK = "04_transposed_conv"


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


# --------------------------------------------------------------------------------------------
# Independent correct implementations (PyTorch's own operators, or another derivation)
# --------------------------------------------------------------------------------------------


def torch_conv_transpose1d(x, kernel, stride=1, padding=0):
    return F.conv_transpose1d(
        x[None, None], kernel[None, None], stride=stride, padding=padding
    ).flatten()


def zero_insertion_conv_transpose1d(x, kernel, stride=1, padding=0):
    """Insert stride - 1 zeros between the inputs, pad by K - 1 - p, convolve with the kernel
    flipped (the "fractionally strided" view)."""
    size = kernel.shape[0]
    spread = x.new_zeros((x.shape[0] - 1) * stride + 1)
    spread[::stride] = x
    border = size - 1 - padding
    if border >= 0:
        spread = F.pad(spread, (border, border))
    else:
        spread = spread[-border : spread.shape[0] + border]
    return F.conv1d(spread[None, None], kernel.flip(0)[None, None]).flatten()


def identity_conv_matrix_1d(kernel, in_len, stride=1, padding=0):
    """Column j of X is the convolution of the j-th unit vector."""
    eye = torch.eye(in_len, dtype=kernel.dtype, device=kernel.device)
    columns = F.conv1d(eye[:, None], kernel[None, None], stride=stride, padding=padding)
    return columns[:, 0].T  # (out_len, in_len)


def jacobian_conv_matrix_1d(kernel, in_len, stride=1, padding=0):
    def conv(signal):
        return F.conv1d(
            signal[None, None], kernel[None, None], stride=stride, padding=padding
        ).flatten()

    return torch.autograd.functional.jacobian(conv, kernel.new_zeros(in_len))


def torch_conv_transpose2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    return F.conv_transpose2d(
        x, weight, bias=bias, stride=stride, padding=padding, output_padding=output_padding
    )


def gradient_conv_transpose2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    """The transposed convolution as the input-gradient of conv2d on an input of the right size."""
    (sh, sw), (ph, pw), (oh, ow) = _pair(stride), _pair(padding), _pair(output_padding)
    n, _, height, width = x.shape
    c_in, c_out, kh, kw = weight.shape  # conv2d reads the same tensor as (C_out, C_in, kH, kW)
    size = ((height - 1) * sh - 2 * ph + kh + oh, (width - 1) * sw - 2 * pw + kw + ow)
    out = torch.nn.grad.conv2d_input(
        (n, c_out, *size), weight, x, stride=(sh, sw), padding=(ph, pw)
    )
    return out if bias is None else out + bias[None, :, None, None]


def formula_output_size(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    # the untrimmed span, then trim and add
    span = stride * (size - 1) + dilation * (kernel - 1) + 1
    return span - padding - padding + output_padding


def measured_output_size(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    out = F.conv_transpose1d(
        torch.zeros(1, 1, size),
        torch.zeros(1, 1, kernel),
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
    )
    return int(out.shape[-1])


CORRECT = [
    ("conv_transpose1d", torch_conv_transpose1d),
    ("conv_transpose1d", zero_insertion_conv_transpose1d),
    ("conv_matrix_1d", identity_conv_matrix_1d),
    ("conv_matrix_1d", jacobian_conv_matrix_1d),
    ("conv_transpose2d", torch_conv_transpose2d),
    ("conv_transpose2d", gradient_conv_transpose2d),
    ("transposed_output_size", formula_output_size),
    ("transposed_output_size", measured_output_size),
]


@pytest.mark.parametrize(
    ("function", "implementation"), CORRECT, ids=[impl.__name__ for _, impl in CORRECT]
)
def test_correct_implementation_passes_every_test_cell(function, implementation):
    outcome = run_test_cells(NOTEBOOK, function, implementation)
    assert set(outcome) == {f"test_{function}", f"hidden_{function}"}
    failed = {grade_id: message for grade_id, message in outcome.items() if message}
    assert not failed, failed


# --------------------------------------------------------------------------------------------
# Common mistakes
# --------------------------------------------------------------------------------------------

# conv_transpose1d


def flipped_kernel_1d(x, kernel, stride=1, padding=0):
    return torch_conv_transpose1d(x, kernel.flip(0), stride, padding)


def padding_ignored_1d(x, kernel, stride=1, padding=0):
    return torch_conv_transpose1d(x, kernel, stride)


def padding_trimmed_from_one_end_1d(x, kernel, stride=1, padding=0):
    return torch_conv_transpose1d(x, kernel, stride)[2 * padding :]


def stride_ignored_1d(x, kernel, stride=1, padding=0):
    return torch_conv_transpose1d(x, kernel, 1, padding)


def stride_as_dilation_1d(x, kernel, stride=1, padding=0):
    signal, weight = x[None, None], kernel[None, None]
    return F.conv_transpose1d(signal, weight, padding=padding, dilation=stride).flatten()


# conv_matrix_1d


def transposed_matrix(kernel, in_len, stride=1, padding=0):
    return identity_conv_matrix_1d(kernel, in_len, stride, padding).T


def flipped_kernel_matrix(kernel, in_len, stride=1, padding=0):
    return identity_conv_matrix_1d(kernel.flip(0), in_len, stride, padding)


def padding_ignored_matrix(kernel, in_len, stride=1, padding=0):
    return identity_conv_matrix_1d(kernel, in_len, stride)


def stride_ignored_matrix(kernel, in_len, stride=1, padding=0):
    return identity_conv_matrix_1d(kernel, in_len, 1, padding)


def padded_columns_kept_matrix(kernel, in_len, stride=1, padding=0):
    # the lecture's layout: one column per element of the padded input
    return identity_conv_matrix_1d(kernel, in_len + 2 * padding, stride)


# conv_transpose2d


def flipped_kernel_2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    return torch_conv_transpose2d(x, weight.flip(-2, -1), stride, padding, output_padding, bias)


def padding_ignored_2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    return torch_conv_transpose2d(x, weight, stride, 0, output_padding, bias)


def bias_ignored_2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    return torch_conv_transpose2d(x, weight, stride, padding, output_padding)


def output_padding_ignored_2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    return torch_conv_transpose2d(x, weight, stride, padding, 0, bias)


def stride_height_for_both_2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    sh, _ = _pair(stride)
    oh, ow = _pair(output_padding)  # kept below the stride actually used, as PyTorch requires
    clipped = (min(oh, sh - 1), min(ow, sh - 1))
    return torch_conv_transpose2d(x, weight, (sh, sh), padding, clipped, bias)


def stride_swapped_2d(x, weight, stride=1, padding=0, output_padding=0, bias=None):
    sh, sw = _pair(stride)
    oh, ow = _pair(output_padding)
    clipped = (min(oh, sw - 1), min(ow, sh - 1))
    return torch_conv_transpose2d(x, weight, (sw, sh), padding, clipped, bias)


# transposed_output_size


def dilation_ignored(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    return formula_output_size(size, kernel, stride, padding, output_padding)


def output_padding_ignored(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    return formula_output_size(size, kernel, stride, padding, 0, dilation)


def padding_subtracted_once(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    return formula_output_size(size, kernel, stride, padding, output_padding, dilation) + padding


def size_times_stride(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    # size * stride instead of (size - 1) * stride
    return formula_output_size(size, kernel, stride, padding, output_padding, dilation) + stride


def convolution_formula(size, kernel, stride=1, padding=0, output_padding=0, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


MUTANTS = {
    "conv_transpose1d": [
        flipped_kernel_1d,
        padding_ignored_1d,
        padding_trimmed_from_one_end_1d,
        stride_ignored_1d,
        stride_as_dilation_1d,
    ],
    "conv_matrix_1d": [
        transposed_matrix,
        flipped_kernel_matrix,
        padding_ignored_matrix,
        stride_ignored_matrix,
        padded_columns_kept_matrix,
    ],
    "conv_transpose2d": [
        flipped_kernel_2d,
        padding_ignored_2d,
        bias_ignored_2d,
        output_padding_ignored_2d,
        stride_height_for_both_2d,
        stride_swapped_2d,
    ],
    "transposed_output_size": [
        dilation_ignored,
        output_padding_ignored,
        padding_subtracted_once,
        size_times_stride,
        convolution_formula,
    ],
}
MUTANT_CASES = [(function, mutant) for function, table in MUTANTS.items() for mutant in table]


@pytest.mark.parametrize(
    ("function", "mutant"), MUTANT_CASES, ids=[mutant.__name__ for _, mutant in MUTANT_CASES]
)
def test_common_mistake_fails_and_says_what_differs(function, mutant):
    outcome = run_test_cells(NOTEBOOK, function, mutant)
    failures = [message for message in outcome.values() if message]
    assert failures, f"{function} with the mistake {mutant.__name__} passed every test cell"
    # the hidden tests grade: they must catch the mistake on their own
    assert outcome[f"hidden_{function}"], f"{mutant.__name__} passed the hidden tests"
    assert all("expected" in m or "differ" in m for m in failures), failures


def test_unimplemented_function_fails_every_cell_with_a_clear_message():
    def not_implemented(*args, **kwargs):
        raise NotImplementedError()

    for function in MUTANTS:
        outcome = run_test_cells(NOTEBOOK, function, not_implemented)
        assert all(message for message in outcome.values()), (function, outcome)
