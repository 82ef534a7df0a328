"""Notebook 10's test cells: independent correct implementations earn every point, and each
common mistake (Gram over the wrong axis, a missing normalisation, the batch mixed into the Gram,
content loss on the wrong layer, ...) fails the hidden test cell with a message that says what
differs.

The test cells (visible and hidden) are run by ``checks.run_test_cells`` against the references
in ``autograder/references/10_style_transfer`` (recorded by ``segcourse references``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `checks`, however pytest is run

from checks import REPO, assert_all_pass, notebook_cells, run_test_cells, solution_namespace  # noqa: E402

NOTEBOOK = "10_style_transfer"


# --------------------------------------------------------------------------------------------
# Independent correct implementations (written from the docstrings)
# --------------------------------------------------------------------------------------------

# gram_matrix


def einsum_gram(features):
    h, w = features.shape[-2:]
    return torch.einsum("nchw,ndhw->ncd", features, features) / (h * w)


def outer_product_mean_gram(features):
    """The average over positions of the outer product of the feature vectors."""
    flat = features.flatten(2)  # (N, C, M)
    return (flat[:, :, None, :] * flat[:, None, :, :]).mean(-1)


def per_image_loop_gram(features):
    grams = []
    for image in features:
        flat = image.reshape(image.shape[0], -1)
        grams.append(torch.mm(flat, flat.t()).div(flat.shape[1]))
    return torch.stack(grams)


# content_loss


def mse_content_loss(features, targets, layer):
    return F.mse_loss(features[layer], targets[layer])


def norm_content_loss(features, targets, layer):
    difference = features[layer] - targets[layer]
    return torch.linalg.vector_norm(difference) ** 2 / difference.numel()


# style_loss


def mse_style_loss(features, target_grams, layers, weights=None):
    weights = [1 / len(layers)] * len(layers) if weights is None else list(weights)
    terms = [F.mse_loss(einsum_gram(features[name]), target_grams[name]) for name in layers]
    return sum(weight * term for weight, term in zip(weights, terms, strict=True))


def stacked_style_loss(features, target_grams, layers, weights=None):
    w = torch.full((len(layers),), 1 / len(layers)) if weights is None else torch.tensor(weights)
    terms = torch.stack([
        (per_image_loop_gram(features[name]) - target_grams[name]).square().sum()
        / target_grams[name].numel()
        for name in layers
    ])
    return (w.to(terms) * terms).sum()


# total_variation


def diff_total_variation(images):
    total = images.new_zeros(())
    for dim in (-2, -1):
        steps = torch.diff(images, dim=dim)
        if steps.numel():
            total = total + steps.pow(2).mean()
    return total


def conv_total_variation(images):
    n, c, h, w = images.shape
    flat = images.reshape(n * c, 1, h, w)
    total = images.new_zeros(())
    if h > 1:
        vertical = F.conv2d(flat, images.new_tensor([[[[-1.0], [1.0]]]]))
        total = total + vertical.pow(2).sum() / vertical.numel()
    if w > 1:
        horizontal = F.conv2d(flat, images.new_tensor([[[[-1.0, 1.0]]]]))
        total = total + horizontal.pow(2).sum() / horizontal.numel()
    return total


# local_gram


def box_filter_local_gram(features, window):
    """Window sums by convolution with a box of ones, divided by the number of pixels inside."""
    n, c, h, w = features.shape
    products = torch.einsum("nihw,njhw->nijhw", features, features).reshape(n * c * c, 1, h, w)
    box = features.new_ones(1, 1, window, window)
    sums = F.conv2d(products, box, padding=window // 2)
    counts = F.conv2d(features.new_ones(1, 1, h, w), box, padding=window // 2)
    return (sums / counts).reshape(n, c * c, h, w)


def loop_local_gram(features, window):
    n, c, h, w = features.shape
    r = window // 2
    out = features.new_zeros(n, c, c, h, w)
    for y in range(h):
        for x in range(w):
            patch = features[:, :, max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].flatten(2)
            out[..., y, x] = patch @ patch.transpose(1, 2) / patch.shape[-1]
    return out.reshape(n, c * c, h, w)


# Further readings from the student notebook (an independent review's implementations)


def view_bmm_gram(features):
    n, c, h, w = features.shape
    flat = features.view(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)).div(h * w)


def double_precision_gram(features):  # computed in float64, returned in the input's dtype
    n, c, h, w = features.shape
    flat = features.double().reshape(n, c, -1)
    return (flat @ flat.transpose(1, 2) / (h * w)).to(features.dtype)


def per_image_mean_content_loss(features, targets, layer):  # equal-sized images: the same mean
    return (features[layer] - targets[layer].detach()).pow(2).mean(dim=(1, 2, 3)).mean()


def weight_dict_style_loss(features, target_grams, layers, weights=None):
    weights = dict.fromkeys(layers, 1 / len(layers)) if weights is None else dict(zip(layers, weights))
    return torch.stack([
        weights[name] * (outer_product_mean_gram(features[name]) - target_grams[name]).pow(2).mean()
        for name in layers
    ]).sum()


def nan_to_num_total_variation(images):  # the mean of no pairs is NaN; NaN -> 0
    return sum(torch.nan_to_num(torch.diff(images, dim=d).pow(2).mean()) for d in (2, 3))


def slicing_total_variation(images):  # a missing term as torch.tensor(0.0)
    x = images
    vertical = (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean() if x.shape[2] > 1 else torch.tensor(0.0)
    horizontal = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean() if x.shape[3] > 1 else torch.tensor(0.0)
    return vertical + horizontal


def unfold_local_gram(features, window):
    n, c, h, w = features.shape
    r = window // 2
    patches = F.unfold(features, window, padding=r).reshape(n, c, window * window, h * w)
    inside = F.unfold(features.new_ones(1, 1, h, w), window, padding=r).sum(1)  # (1, HW)
    grams = torch.einsum("nikp,njkp->nijp", patches, patches) / inside
    return grams.reshape(n, c * c, h, w)


def integral_image_local_gram(features, window):
    n, c, h, w = features.shape
    r = window // 2
    products = (features.unsqueeze(2) * features.unsqueeze(1)).reshape(n, c * c, h, w)

    def box(x):  # sums over the window clipped to the image, from a summed-area table
        table = F.pad(x.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
        ys, xs = torch.arange(h), torch.arange(w)
        y0, y1 = (ys - r).clamp(min=0)[:, None], (ys + r + 1).clamp(max=h)[:, None]
        x0, x1 = (xs - r).clamp(min=0), (xs + r + 1).clamp(max=w)
        return table[..., y1, x1] - table[..., y0, x1] - table[..., y1, x0] + table[..., y0, x0]

    return box(products) / box(features.new_ones(1, 1, h, w))


CORRECT = [
    ("gram_matrix", einsum_gram),
    ("gram_matrix", outer_product_mean_gram),
    ("gram_matrix", per_image_loop_gram),
    ("content_loss", mse_content_loss),
    ("content_loss", norm_content_loss),
    ("style_loss", mse_style_loss),
    ("style_loss", stacked_style_loss),
    ("total_variation", diff_total_variation),
    ("total_variation", conv_total_variation),
    ("local_gram", box_filter_local_gram),
    ("local_gram", loop_local_gram),
    ("gram_matrix", view_bmm_gram),
    ("gram_matrix", double_precision_gram),
    ("content_loss", per_image_mean_content_loss),
    ("style_loss", weight_dict_style_loss),
    ("total_variation", nan_to_num_total_variation),
    ("total_variation", slicing_total_variation),
    ("local_gram", unfold_local_gram),
    ("local_gram", integral_image_local_gram),
]


@pytest.mark.parametrize(
    ("function", "implementation"), CORRECT, ids=[impl.__name__ for _, impl in CORRECT]
)
def test_correct_implementation_passes_every_test_cell(function, implementation):
    assert_all_pass(NOTEBOOK, function, implementation)


# --------------------------------------------------------------------------------------------
# Common mistakes
# --------------------------------------------------------------------------------------------

# gram_matrix


def gram_over_positions(features):  # the wrong axis: (N, HW, HW)
    flat = features.flatten(2)
    return flat.transpose(1, 2) @ flat / flat.shape[1]


def gram_reshaped_without_permute(features):  # (N, HW, C) by reshape, not by permute
    n, c, h, w = features.shape
    flat = features.reshape(n, h * w, c)
    return flat.transpose(1, 2) @ flat / (h * w)


def gram_not_normalised(features):
    return einsum_gram(features) * features.shape[-2] * features.shape[-1]


def gram_normalised_by_chw(features):
    return einsum_gram(features) / features.shape[1]


def gram_batch_into_positions(features):  # one Gram for the whole batch, repeated per image
    n, c = features.shape[:2]
    flat = features.transpose(0, 1).reshape(c, -1)
    return (flat @ flat.T / (flat.shape[1] / n) / n).expand(n, c, c)


def gram_batch_into_channels(features):  # the tutorial's (N*C, HW) with batch size > 1
    n, c, h, w = features.shape
    flat = features.reshape(n * c, h * w)
    return flat @ flat.T / (n * c * h * w)


def gram_centred(features):  # a covariance, not a Gram matrix
    flat = features.flatten(2)
    flat = flat - flat.mean(-1, keepdim=True)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


# content_loss


def content_first_layer(features, targets, layer):
    first = next(iter(features))
    return F.mse_loss(features[first], targets[first])


def content_last_layer(features, targets, layer):
    last = list(features)[-1]
    return F.mse_loss(features[last], targets[last])


def content_sum(features, targets, layer):
    return (features[layer] - targets[layer]).pow(2).sum()


def content_not_squared(features, targets, layer):
    return (features[layer] - targets[layer]).abs().mean()


def content_all_layers(features, targets, layer):
    return sum(F.mse_loss(features[name], targets[name]) for name in features) / len(features)


# style_loss


def style_unnormalised_gram(features, target_grams, layers, weights=None):
    return mse_style_loss(
        {name: f * (f.shape[-2] * f.shape[-1]) ** 0.5 for name, f in features.items()},
        target_grams, layers, weights,
    )


def style_batch_mixed(features, target_grams, layers, weights=None):
    weights = [1 / len(layers)] * len(layers) if weights is None else weights
    total = 0.0
    for name, weight in zip(layers, weights, strict=True):
        gram = gram_batch_into_positions(features[name])[:1]  # one (1, C, C), broadcast
        total = total + weight * (gram - target_grams[name]).pow(2).mean()
    return total


def style_summed_over_layers(features, target_grams, layers, weights=None):
    return mse_style_loss(features, target_grams, layers, [1.0] * len(layers) if weights is None else weights)


def style_weights_ignored(features, target_grams, layers, weights=None):
    return mse_style_loss(features, target_grams, layers)


def style_sum_of_squares(features, target_grams, layers, weights=None):
    weights = [1 / len(layers)] * len(layers) if weights is None else weights
    return sum(w * (einsum_gram(features[n]) - target_grams[n]).pow(2).sum()
               for n, w in zip(layers, weights, strict=True))


def style_every_layer(features, target_grams, layers, weights=None):
    names = list(features)
    return mse_style_loss(features, target_grams, names, None if weights is None else
                          [weights[layers.index(n)] if n in layers else 1.0 for n in names])


# total_variation


def tv_absolute(images):
    return sum(torch.diff(images, dim=d).abs().mean() for d in (-2, -1) if images.shape[d] > 1)


def tv_wrap_around(images):
    return sum((images - images.roll(1, d)).pow(2).mean() for d in (-2, -1))


def tv_one_direction(images):
    steps = torch.diff(images, dim=-1)
    return steps.pow(2).mean() if steps.numel() else images.new_zeros(())


def tv_no_empty_guard(images):
    return torch.diff(images, dim=-2).pow(2).mean() + torch.diff(images, dim=-1).pow(2).mean()


def tv_sum(images):
    return sum(torch.diff(images, dim=d).pow(2).sum() for d in (-2, -1))


def tv_one_mean(images):  # both directions in one mean over all pairs
    v, h = torch.diff(images, dim=-2), torch.diff(images, dim=-1)
    return (v.pow(2).sum() + h.pow(2).sum()) / max(1, v.numel() + h.numel())


# local_gram


def local_gram_zero_padding(features, window):
    n, c, h, w = features.shape
    products = (features[:, :, None] * features[:, None]).reshape(n, c * c, h, w)
    return F.avg_pool2d(products, window, stride=1, padding=window // 2, count_include_pad=True)


def local_gram_sum(features, window):
    n, c, h, w = features.shape
    products = (features[:, :, None] * features[:, None]).reshape(n, c * c, h, w)
    return F.conv2d(products.reshape(-1, 1, h, w), features.new_ones(1, 1, window, window),
                    padding=window // 2).reshape(n, c * c, h, w)


def local_gram_product_of_means(features, window):
    n, c, h, w = features.shape
    means = F.avg_pool2d(features, window, stride=1, padding=window // 2, count_include_pad=False)
    return (means[:, :, None] * means[:, None]).reshape(n, c * c, h, w)


def local_gram_window_as_radius(features, window):
    return box_filter_local_gram(features, 2 * window + 1)


# Further mistakes (an independent review): each fails a hidden cell


def gram_detached(features):  # no gradient reaches the pixels
    return einsum_gram(features.detach())


def gram_under_no_grad(features):
    with torch.no_grad():
        return einsum_gram(features)


def gram_always_float32(features):
    return einsum_gram(features.float())


def gram_unbiased(features):  # divides by H * W - 1
    return einsum_gram(features) * features[0, 0].numel() / (features[0, 0].numel() - 1)


def content_detached(features, targets, layer):
    return F.mse_loss(features[layer].detach(), targets[layer])


def content_half(features, targets, layer):  # Gatys' 1/2
    return 0.5 * F.mse_loss(features[layer], targets[layer])


def content_summed_over_batch(features, targets, layer):  # mean per image, summed over images
    return (features[layer] - targets[layer]).pow(2).mean(dim=(1, 2, 3)).sum()


def style_detached_gram(features, target_grams, layers, weights=None):
    return mse_style_loss({name: f.detach() for name, f in features.items()}, target_grams, layers, weights)


def style_weights_normalised(features, target_grams, layers, weights=None):
    weights = [1.0] * len(layers) if weights is None else list(weights)
    return mse_style_loss(features, target_grams, layers, [w / sum(weights) for w in weights])


def style_weights_and_average(features, target_grams, layers, weights=None):
    weights = [1.0] * len(layers) if weights is None else list(weights)
    return mse_style_loss(features, target_grams, layers, [w / len(layers) for w in weights])


def style_summed_over_batch(features, target_grams, layers, weights=None):
    weights = [1 / len(layers)] * len(layers) if weights is None else weights
    return sum(w * (einsum_gram(features[n]) - target_grams[n]).pow(2).mean(dim=(1, 2)).sum()
               for n, w in zip(layers, weights, strict=True))


def style_first_target(features, target_grams, layers, weights=None):  # every image against image 0
    return mse_style_loss(features, {n: g[:1].expand_as(g) for n, g in target_grams.items()}, layers, weights)


def tv_detached(images):
    return diff_total_variation(images.detach())


def tv_zero_padded(images):  # differences to a zero row and column past the border
    padded = F.pad(images, (0, 1, 0, 1))
    return sum(torch.diff(padded, dim=d)[..., : images.shape[-2], : images.shape[-1]].pow(2).mean()
               for d in (-2, -1))


def tv_isotropic(images):  # mean of dx^2 + dy^2 over the pixels that have both
    x = images
    return ((x[:, :, 1:, :-1] - x[:, :, :-1, :-1]).pow(2) + (x[:, :, :-1, 1:] - x[:, :, :-1, :-1]).pow(2)).mean()


def tv_summed_over_batch(images):
    return sum(torch.nan_to_num(torch.diff(images, dim=d).pow(2).mean(dim=(1, 2, 3))).sum() for d in (2, 3))


def tv_python_zero(images):  # a plain 0.0 for a missing term: a float for a 1x1 image
    x = images
    vertical = (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean() if x.shape[2] > 1 else 0.0
    horizontal = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean() if x.shape[3] > 1 else 0.0
    return vertical + horizontal


def local_gram_replicate_padding(features, window):
    n, c, h, w = features.shape
    r = window // 2
    products = (features[:, :, None] * features[:, None]).reshape(n, c * c, h, w)
    return F.avg_pool2d(F.pad(products, (r, r, r, r), mode="replicate"), window, stride=1)


def local_gram_anchored_window(features, window):  # the window starts at the pixel
    n, c, h, w = features.shape
    products = (features[:, :, None] * features[:, None]).reshape(n, c * c, h, w)
    ones = features.new_ones(1, 1, h, w)
    pad = (0, window - 1, 0, window - 1)
    return F.avg_pool2d(F.pad(products, pad), window, stride=1) / F.avg_pool2d(F.pad(ones, pad), window, stride=1)


def local_gram_batch_mixed(features, window):
    out = box_filter_local_gram(features, window)
    return out.mean(0, keepdim=True).expand_as(out)


MUTANTS = {
    "gram_matrix": [
        gram_over_positions,
        gram_reshaped_without_permute,
        gram_not_normalised,
        gram_normalised_by_chw,
        gram_batch_into_positions,
        gram_batch_into_channels,
        gram_centred,
        gram_detached,
        gram_under_no_grad,
        gram_always_float32,
        gram_unbiased,
    ],
    "content_loss": [
        content_first_layer,
        content_last_layer,
        content_sum,
        content_not_squared,
        content_all_layers,
        content_detached,
        content_half,
        content_summed_over_batch,
    ],
    "style_loss": [
        style_unnormalised_gram,
        style_batch_mixed,
        style_summed_over_layers,
        style_weights_ignored,
        style_sum_of_squares,
        style_every_layer,
        style_detached_gram,
        style_weights_normalised,
        style_weights_and_average,
        style_summed_over_batch,
        style_first_target,
    ],
    "total_variation": [
        tv_absolute,
        tv_wrap_around,
        tv_one_direction,
        tv_no_empty_guard,
        tv_sum,
        tv_one_mean,
        tv_detached,
        tv_zero_padded,
        tv_isotropic,
        tv_summed_over_batch,
        tv_python_zero,
    ],
    "local_gram": [
        local_gram_zero_padding,
        local_gram_sum,
        local_gram_product_of_means,
        local_gram_window_as_radius,
        local_gram_replicate_padding,
        local_gram_anchored_window,
        local_gram_batch_mixed,
    ],
}
MUTANT_CASES = [(function, mutant) for function, table in MUTANTS.items() for mutant in table]


@pytest.mark.parametrize(
    ("function", "mutant"), MUTANT_CASES, ids=[mutant.__name__ for _, mutant in MUTANT_CASES]
)
def test_common_mistake_fails_the_hidden_tests(function, mutant):
    outcome = run_test_cells(NOTEBOOK, function, mutant)
    assert outcome[f"hidden_{function}"], f"{mutant.__name__} passed the hidden tests"
    failures = [message for message in outcome.values() if message]
    words = ("expected", "differ", "NaN", "Error")  # the message says what is wrong
    assert all(any(word in m for word in words) for m in failures), failures


def test_unimplemented_function_fails_every_cell():
    def not_implemented(*args, **kwargs):
        raise NotImplementedError()

    for function in MUTANTS:
        outcome = run_test_cells(NOTEBOOK, function, not_implemented)
        assert all(message for message in outcome.values()), (function, outcome)


# --------------------------------------------------------------------------------------------
# The notebook's copy of notebook 05's UNet still fits the shipped checkpoint
# --------------------------------------------------------------------------------------------


def test_unet_copy_matches_notebook_05_and_the_checkpoint():
    sys.path.insert(0, str(REPO / "scripts"))
    from train_checkpoints import model_factory

    from segcourse.checkpoints import checkpoint_info, load_checkpoint

    original = model_factory("unet_shapes").state_dict()
    namespace = solution_namespace(NOTEBOOK, "gram_matrix")  # the setup cell's names
    cells = [c for c in notebook_cells(NOTEBOOK) if c["cell_type"] == "code"]
    source = next("".join(c["source"]) for c in cells if "class UNet(nn.Module)" in "".join(c["source"]))
    definitions = source.split("random_net = ")[0]  # the classes, not the cell's instances
    exec(compile(definitions, f"{NOTEBOOK}:classes", "exec"), namespace)
    copy = namespace["UNet"](**checkpoint_info("unet_shapes")["model"])
    assert {k: tuple(v.shape) for k, v in copy.state_dict().items()} == {
        k: tuple(v.shape) for k, v in original.items()
    }
    load_checkpoint("unet_shapes", copy)  # strict: raises if it no longer fits
    encoder = namespace["EncoderFeatures"](copy)
    shapes = {k: tuple(v.shape) for k, v in encoder(torch.rand(1, 3, 64, 64)).items()}
    assert shapes == {"down0": (1, 16, 64, 64), "down1": (1, 32, 32, 32),
                      "down2": (1, 64, 16, 16), "bottleneck": (1, 128, 8, 8)}
