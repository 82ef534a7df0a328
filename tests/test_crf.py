"""segcourse.crf: notebook 01's dense CRF as a tool. It earns every point of 01's own tests (so
it computes what 01's reference computes), and its windowed form equals the dense one when the
window holds every pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from checks import assert_all_pass  # noqa: E402

from segcourse.crf import crf_mean_field, pair_count  # noqa: E402


def test_passes_notebook_01s_tests():
    assert_all_pass("01_clustering", "crf_mean_field", crf_mean_field)


def _inputs(n, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 4 - 2, torch.rand(n, 3, h, w, generator=g)


@pytest.mark.parametrize("shape", [(2, 9, 13), (3, 16, 7)])
def test_window_with_every_pair_is_the_dense_crf(shape):
    logits, images = _inputs(2, *shape)
    params = dict(theta_alpha=5.0, theta_beta=0.3, theta_gamma=2.0, w_appearance=1.5, w_smooth=0.7)
    dense = crf_mean_field(logits, images, 4, **params)
    windowed = torch.stack([
        crf_mean_field(lo, im, 4, window=max(shape[1:]) - 1, **params)
        for lo, im in zip(logits, images, strict=True)
    ])
    assert torch.allclose(windowed, dense, atol=1e-5)
    # also through the windowed code path (large radius, batch)
    from segcourse.crf import _windowed
    assert torch.allclose(_windowed(logits, images, 4, 100, **params), dense, atol=1e-5)


def test_window_keeps_only_near_pairs():
    """A truncated kernel written out densely gives the windowed result."""
    logits, images = _inputs(1, 2, 10, 11, seed=3)
    radius, theta_alpha, theta_beta, theta_gamma, w_a, w_s = 2, 3.0, 0.4, 1.0, 1.0, 0.5
    height, width = 10, 11
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    col = images[0].reshape(3, -1).T
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    kernel = (w_a * torch.exp(-d2 / (2 * theta_alpha**2) - ((col[:, None] - col[None]) ** 2).sum(-1)
                              / (2 * theta_beta**2)) + w_s * torch.exp(-d2 / (2 * theta_gamma**2)))
    near = ((pos[:, None] - pos[None]).abs() <= radius).all(-1)
    kernel = kernel * near
    kernel.fill_diagonal_(0)
    q = logits[0].reshape(2, -1).softmax(0)
    for _ in range(3):
        q = (logits[0].reshape(2, -1) + q @ kernel).softmax(0)
    got = crf_mean_field(logits, images, 3, theta_alpha, theta_beta, theta_gamma, w_a, w_s,
                         window=radius)
    assert torch.allclose(got[0], q.reshape(2, height, width), atol=1e-5)


def test_output_is_a_distribution_and_zero_iterations_is_softmax():
    logits, images = _inputs(3, 4, 12, 12, seed=5)
    q = crf_mean_field(logits, images, 3, window=4)
    assert q.shape == logits.shape and bool((q >= 0).all())
    assert torch.allclose(q.sum(1), torch.ones(3, 12, 12), atol=1e-5)
    assert torch.allclose(crf_mean_field(logits, images, 0, window=4), logits.softmax(1))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        crf_mean_field(torch.zeros(2, 4, 4), torch.zeros(3, 5, 4), 1)


def test_pair_count():
    counts = pair_count(64, 64)
    assert counts == {"pixels": 4096, "unordered": 8_386_560, "ordered": 16_773_120,
                      "matrix": 16_777_216}
