"""09_transformers: independent correct implementations pass every test cell; common mistakes fail.

The test cells (visible and hidden) run through ``checks.run_test_cells`` against the recorded
references, with the notebook's function or class replaced by the implementation under test.
Expected values come from PyTorch (``nn.Conv2d``, ``nn.MultiheadAttention``,
``F.scaled_dot_product_attention``), torchvision (``generalized_box_iou``, ``resize``) and SciPy
(``linear_sum_assignment``), never from a copy of the solution.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

sys.path.insert(0, str(Path(__file__).parent))
from checks import notebook_cells, run_test_cells, setup_namespace, solution_namespace  # noqa: E402

NOTEBOOK = "09_transformers"


def all_pass(outcome: dict) -> None:
    failures = {k: v for k, v in outcome.items() if v is not None}
    assert not failures, failures
    assert len(outcome) == 2, f"expected a visible and a hidden test cell, got {sorted(outcome)}"


def hidden_fails(outcome: dict) -> None:
    assert outcome[[k for k in outcome if k.startswith("hidden_")][0]] is not None, (
        "a wrong implementation passed the hidden tests"
    )


def all_fail(outcome: dict) -> None:
    assert all(v is not None for v in outcome.values()), outcome


def notebook_class(name: str):
    """Execute the solution cell that defines ``name`` (its given ``__init__``) and return it."""
    return solution_namespace(NOTEBOOK, name)[name]


def with_forward(name: str, forward):
    cls = notebook_class(name)
    return type(name, (cls,), {"forward": forward})


# ---- patch_embed ---------------------------------------------------------------------------


def unfold_patch_embed(images, weight, bias=None, stride=None, padding=0):
    """F.unfold cuts the patches; a matrix product projects them."""
    kernel = weight.shape[-1]
    stride = kernel if stride is None else stride
    columns = F.unfold(images, kernel, padding=padding, stride=stride)  # (N, C k k, L)
    tokens = columns.transpose(1, 2) @ weight.reshape(weight.shape[0], -1).T
    return tokens if bias is None else tokens + bias


def module_patch_embed(images, weight, bias=None, stride=None, padding=0):
    """An nn.Conv2d loaded with the weights, then (N, D, h, w) -> (N, h w, D) with einops-free reshapes."""
    d, c, k, _ = weight.shape
    conv = nn.Conv2d(c, d, k, stride=stride or k, padding=padding, bias=bias is not None)
    conv = conv.to(images.device, images.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        out = conv(images)
    return out.permute(0, 2, 3, 1).reshape(images.shape[0], -1, d)


def loop_patch_embed(images, weight, bias=None, stride=None, padding=0):
    """Pad, then slice every patch by hand."""
    d, _, k, _ = weight.shape
    stride = stride or k
    padded = F.pad(images, (padding,) * 4)
    rows = (padded.shape[-2] - k) // stride + 1
    cols = (padded.shape[-1] - k) // stride + 1
    tokens = []
    for i in range(rows):
        for j in range(cols):
            patch = padded[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            tokens.append(torch.einsum("nchw,dchw->nd", patch, weight))
    out = torch.stack(tokens, dim=1)
    return out if bias is None else out + bias


@pytest.mark.parametrize("impl", [unfold_patch_embed, module_patch_embed, loop_patch_embed])
def test_patch_embed_independent_pass(impl):
    all_pass(run_test_cells(NOTEBOOK, "patch_embed", impl))


def column_major(images, weight, bias=None, stride=None, padding=0):
    maps = F.conv2d(images, weight, bias, stride=stride or weight.shape[-1], padding=padding)
    return maps.transpose(-2, -1).flatten(2).transpose(1, 2)


def channels_first(images, weight, bias=None, stride=None, padding=0):
    return F.conv2d(images, weight, bias, stride=stride or weight.shape[-1], padding=padding).flatten(2)


def stride_one(images, weight, bias=None, stride=None, padding=0):
    return F.conv2d(images, weight, bias, stride=stride or 1, padding=padding).flatten(2).transpose(1, 2)


def no_padding(images, weight, bias=None, stride=None, padding=0):
    return F.conv2d(images, weight, bias, stride=stride or weight.shape[-1]).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("wrong", [column_major, channels_first, stride_one, no_padding])
def test_patch_embed_mistakes_fail(wrong):
    hidden_fails(run_test_cells(NOTEBOOK, "patch_embed", wrong))


# ---- efficient_attention -------------------------------------------------------------------


def reduced_context(x, size, sr_ratio, w_sr, b_sr):
    """Keys' and values' tokens through nn.Conv2d and a non-affine nn.LayerNorm."""
    if sr_ratio == 1:
        return x
    n, _, c = x.shape
    conv = nn.Conv2d(c, c, sr_ratio, stride=sr_ratio).to(x.device, x.dtype)
    norm = nn.LayerNorm(c, elementwise_affine=False).to(x.device, x.dtype)
    with torch.no_grad():
        conv.weight.copy_(w_sr)
        conv.bias.copy_(b_sr)
        grid = x.permute(0, 2, 1).unflatten(2, tuple(size))
        return norm(conv(grid).flatten(2).permute(0, 2, 1))


def mha_attention(x, size, w_q, w_k, w_v, w_o, num_heads, sr_ratio=1, w_sr=None, b_sr=None):
    return _mha(x, reduced_context(x, size, sr_ratio, w_sr, b_sr), w_q, w_k, w_v, w_o, num_heads)


def _mha(x, context, w_q, w_k, w_v, w_o, num_heads):
    """torch.nn.MultiheadAttention of the queries x over the keys and values context."""
    mha = nn.MultiheadAttention(x.shape[-1], num_heads, bias=False, batch_first=True)
    mha = mha.to(x.device, x.dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        mha.out_proj.weight.copy_(w_o)
        return mha(x, context, context, need_weights=False)[0]


def sdpa_attention(x, size, w_q, w_k, w_v, w_o, num_heads, sr_ratio=1, w_sr=None, b_sr=None):
    context = reduced_context(x, size, sr_ratio, w_sr, b_sr)
    n, length, c = x.shape
    q = F.linear(x, w_q).unflatten(-1, (num_heads, -1)).transpose(1, 2)
    k = F.linear(context, w_k).unflatten(-1, (num_heads, -1)).transpose(1, 2)
    v = F.linear(context, w_v).unflatten(-1, (num_heads, -1)).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)  # (N, h, L, d)
    return F.linear(out.transpose(1, 2).reshape(n, length, c), w_o)


def einsum_attention(x, size, w_q, w_k, w_v, w_o, num_heads, sr_ratio=1, w_sr=None, b_sr=None,
                     scale=None, softmax_dim=-1, split="contiguous"):
    """Head by head with einsum; the keyword arguments inject the mistakes."""
    n, length, c = x.shape
    d = c // num_heads
    if sr_ratio > 1:
        grid = x.transpose(1, 2).reshape(n, c, *size)
        reduced = F.conv2d(grid, w_sr, b_sr, stride=sr_ratio).flatten(2).transpose(1, 2)
        mean = reduced.mean(-1, keepdim=True)
        var = reduced.var(-1, unbiased=False, keepdim=True)
        context = (reduced - mean) / torch.sqrt(var + 1e-5)
    else:
        context = x
    q, k, v = x @ w_q.T, context @ w_k.T, context @ w_v.T
    heads = []
    for m in range(num_heads):
        channels = slice(m * d, (m + 1) * d) if split == "contiguous" else slice(m, c, num_heads)
        scores = torch.einsum("nid,njd->nij", q[..., channels], k[..., channels])
        scores = scores * (1 / math.sqrt(d) if scale is None else scale(d, c))
        heads.append(torch.einsum("nij,njd->nid", scores.softmax(dim=softmax_dim), v[..., channels]))
    if split != "contiguous":
        out = torch.stack(heads, dim=-1).reshape(n, length, c)  # channel m + h * t back in place
    else:
        out = torch.cat(heads, dim=-1)
    return out @ w_o.T


@pytest.mark.parametrize("impl", [mha_attention, sdpa_attention, einsum_attention])
def test_efficient_attention_independent_pass(impl):
    all_pass(run_test_cells(NOTEBOOK, "efficient_attention", impl))


def reduce_queries_too(x, size, w_q, w_k, w_v, w_o, num_heads, sr_ratio=1, w_sr=None, b_sr=None):
    context = reduced_context(x, size, sr_ratio, w_sr, b_sr)
    return mha_attention(context, size, w_q, w_k, w_v, w_o, num_heads)


def reduce_without_norm(x, size, w_q, w_k, w_v, w_o, num_heads, sr_ratio=1, w_sr=None, b_sr=None):
    if sr_ratio == 1:
        return mha_attention(x, size, w_q, w_k, w_v, w_o, num_heads)
    n, _, c = x.shape
    grid = x.transpose(1, 2).reshape(n, c, *size)
    context = F.conv2d(grid, w_sr, b_sr, stride=sr_ratio).flatten(2).transpose(1, 2)
    return _mha(x, context, w_q, w_k, w_v, w_o, num_heads)


def reduce_column_major(x, size, w_q, w_k, w_v, w_o, num_heads, sr_ratio=1, w_sr=None, b_sr=None):
    """Reads the tokens into the map column by column."""
    if sr_ratio == 1:
        return mha_attention(x, size, w_q, w_k, w_v, w_o, num_heads)
    n, _, c = x.shape
    grid = x.transpose(1, 2).reshape(n, c, size[1], size[0]).transpose(-2, -1)
    context = F.layer_norm(F.conv2d(grid, w_sr, b_sr, stride=sr_ratio).flatten(2).transpose(1, 2), (c,))
    mha = nn.MultiheadAttention(c, num_heads, bias=False, batch_first=True).to(x.device, x.dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        mha.out_proj.weight.copy_(w_o)
        return mha(x, context, context, need_weights=False)[0]


@pytest.mark.parametrize("wrong", [
    lambda *a, **k: einsum_attention(*a, **k, scale=lambda d, c: 1.0),  # no 1/sqrt(d)
    lambda *a, **k: einsum_attention(*a, **k, scale=lambda d, c: 1 / d),  # 1/d
    lambda *a, **k: einsum_attention(*a, **k, scale=lambda d, c: 1 / math.sqrt(c)),  # sqrt(C)
    lambda *a, **k: einsum_attention(*a, **k, softmax_dim=-2),  # over the queries
    lambda *a, **k: einsum_attention(*a, **k, split="interleaved"),  # channel c -> head c % h
    reduce_queries_too, reduce_without_norm, reduce_column_major,
], ids=["no_scale", "scale_1_over_d", "scale_sqrt_C", "softmax_over_queries", "interleaved_heads",
        "reduce_queries", "no_layer_norm", "column_major_reduction"])
def test_efficient_attention_mistakes_fail(wrong):
    hidden_fails(run_test_cells(NOTEBOOK, "efficient_attention", wrong))


# ---- MixFFN --------------------------------------------------------------------------------


def mixffn_forward(activation=lambda t: F.gelu(t), order="conv_first", layout="row"):
    def forward(self, x, size):
        hidden = F.linear(x, self.fc1.weight, self.fc1.bias)  # (N, L, hidden)
        n, length, c = hidden.shape
        if order == "gelu_first":
            hidden = activation(hidden)
        if layout == "row":
            grid = hidden.permute(0, 2, 1).unflatten(2, tuple(size))
        else:
            grid = hidden.permute(0, 2, 1).unflatten(2, (size[1], size[0])).transpose(-2, -1)
        # the depthwise convolution from unfold: each channel with its own 3x3 kernel
        patches = F.unfold(grid, 3, padding=1).reshape(n, c, 9, -1)  # (N, C, 9, H W)
        if layout != "row":
            patches = patches.reshape(n, c, 9, *size).transpose(-2, -1).reshape(n, c, 9, -1)
        conv = torch.einsum("nckl,ck->nlc", patches, self.dwconv.weight.reshape(c, 9)) + self.dwconv.bias
        if order == "conv_first":
            conv = activation(conv)
        return F.linear(conv, self.fc2.weight, self.fc2.bias)

    return forward


def test_mixffn_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "MixFFN", with_forward("MixFFN", mixffn_forward())))


def test_mixffn_erf_gelu_passes():
    def erf_gelu(t):
        return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))

    all_pass(run_test_cells(NOTEBOOK, "MixFFN", with_forward("MixFFN", mixffn_forward(erf_gelu))))


@pytest.mark.parametrize("forward", [
    mixffn_forward(order="gelu_first"),
    mixffn_forward(activation=F.relu),
    mixffn_forward(layout="column"),
], ids=["gelu_before_conv", "relu", "column_major"])
def test_mixffn_mistakes_fail(forward):
    hidden_fails(run_test_cells(NOTEBOOK, "MixFFN", with_forward("MixFFN", forward)))


def test_mixffn_without_conv_fails():
    def no_conv(self, x, size):
        return self.fc2(F.gelu(self.fc1(x)))

    all_fail(run_test_cells(NOTEBOOK, "MixFFN", with_forward("MixFFN", no_conv)))


# ---- SegFormerDecoder ----------------------------------------------------------------------


def decoder_forward(order="fine_first", upsample="resize"):
    def up(y, size):
        if upsample == "resize":  # torchvision's bilinear resize (align_corners=False), no antialias
            return TF.resize(y, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        if upsample == "align_corners":
            return F.interpolate(y, size=size, mode="bilinear", align_corners=True)
        return F.interpolate(y, size=size, mode="nearest")

    def forward(self, features):
        size = tuple(features[0].shape[-2:])
        maps = []
        for conv, f in zip(self.linears, features, strict=True):
            projected = torch.einsum("nchw,dc->ndhw", f, conv.weight[:, :, 0, 0]) + conv.bias[:, None, None]
            maps.append(projected if tuple(f.shape[-2:]) == size else up(projected, size))
        if order == "coarse_first":  # the official code's order [c4, c3, c2, c1]
            maps = maps[::-1]
        return self.classifier(self.fuse(torch.cat(maps, dim=1)))

    return forward


def test_decoder_independent_passes():
    all_pass(run_test_cells(NOTEBOOK, "SegFormerDecoder", with_forward("SegFormerDecoder", decoder_forward())))


@pytest.mark.parametrize("forward", [decoder_forward(order="coarse_first"),
                                     decoder_forward(upsample="align_corners"),
                                     decoder_forward(upsample="nearest")],
                         ids=["coarse_first", "align_corners", "nearest"])
def test_decoder_mistakes_fail(forward):
    all_fail(run_test_cells(NOTEBOOK, "SegFormerDecoder", with_forward("SegFormerDecoder", forward)))


# ---- matching_cost -------------------------------------------------------------------------


def torchvision_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0,
                     class_term="prob", box_term="giou", orientation="QT"):
    probs = pred_logits.softmax(-1)
    cls = probs[:, tgt_labels] if class_term == "prob" else probs.log()[:, tgt_labels]
    l1 = torch.cdist(pred_boxes, tgt_boxes, p=1)
    if box_term == "giou":
        overlap = generalized_box_iou(pred_boxes, tgt_boxes)
    else:
        from torchvision.ops import box_iou

        overlap = box_iou(pred_boxes, tgt_boxes)
    cost = -w_class * cls + w_l1 * l1 - w_giou * overlap
    return cost if orientation == "QT" else cost.T


def numpy_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0):
    """Pair by pair in float64 NumPy, GIoU from its definition."""
    logits = pred_logits.detach().cpu().double().numpy()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    p, t = pred_boxes.detach().cpu().double().numpy(), tgt_boxes.detach().cpu().double().numpy()
    out = np.zeros((len(p), len(t)))
    for i, j in itertools.product(range(len(p)), range(len(t))):
        a, b = p[i], t[j]
        area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = area_a + area_b - inter
        hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
        giou = inter / union - (hull - union) / hull
        out[i, j] = -w_class * probs[i, int(tgt_labels[j])] + w_l1 * np.abs(a - b).sum() - w_giou * giou
    return torch.as_tensor(out, dtype=pred_boxes.dtype, device=pred_boxes.device)


@pytest.mark.parametrize("impl", [torchvision_cost, numpy_cost])
def test_matching_cost_independent_pass(impl):
    all_pass(run_test_cells(NOTEBOOK, "matching_cost", impl))


@pytest.mark.parametrize("options", [dict(class_term="log"), dict(box_term="iou"), dict(orientation="TQ")],
                         ids=["log_probability", "iou_not_giou", "transposed"])
def test_matching_cost_mistakes_fail(options):
    def wrong(*args, **kwargs):
        return torchvision_cost(*args, **kwargs, **options)

    all_fail(run_test_cells(NOTEBOOK, "matching_cost", wrong))


# ---- hungarian_match -----------------------------------------------------------------------


def _cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou):
    return torchvision_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou).double().cpu().numpy()


def scipy_match(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0):
    rows, cols = linear_sum_assignment(_cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou))
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def transposed_then_sorted(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0):
    """Solve on the (T, Q) matrix, maximising the negated cost, then sort the pairs by prediction."""
    cost = _cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou)
    targets, preds = linear_sum_assignment(-cost.T, maximize=True)
    order = np.argsort(preds)
    return torch.as_tensor(preds[order], dtype=torch.int64), torch.as_tensor(targets[order], dtype=torch.int64)


def brute_force_match(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0):
    """Every injective assignment when that is affordable (else SciPy on the transposed problem)."""
    cost = _cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou)
    q, t = cost.shape
    if math.perm(q, t) > 50_000:
        return transposed_then_sorted(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou)
    best = min(itertools.permutations(range(q), t), key=lambda rows: sum(cost[r, j] for j, r in enumerate(rows)))
    pairs = sorted(zip(best, range(t), strict=True))
    return (torch.tensor([p for p, _ in pairs], dtype=torch.int64),
            torch.tensor([j for _, j in pairs], dtype=torch.int64))


@pytest.mark.parametrize("impl", [scipy_match, transposed_then_sorted, brute_force_match])
def test_hungarian_match_independent_pass(impl):
    all_pass(run_test_cells(NOTEBOOK, "hungarian_match", impl))


def test_notebook_solution_with_an_independent_cost_passes():
    namespace = solution_namespace(NOTEBOOK, "hungarian_match")
    namespace["matching_cost"] = torchvision_cost  # the function's globals: its own namespace
    all_pass(run_test_cells(NOTEBOOK, "hungarian_match", namespace["hungarian_match"]))


def swapped_order(*args, **kwargs):
    preds, targets = scipy_match(*args, **kwargs)
    return targets, preds


def sorted_by_target(*args, **kwargs):
    preds, targets = scipy_match(*args, **kwargs)
    order = torch.argsort(targets)
    return preds[order], targets[order]


def maximised(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0):
    cost = _cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou)
    rows, cols = linear_sum_assignment(cost, maximize=True)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def greedy(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class=1.0, w_l1=5.0, w_giou=2.0):
    """Each target in turn takes the cheapest free prediction: not optimal."""
    cost = _cost(pred_logits, pred_boxes, tgt_labels, tgt_boxes, w_class, w_l1, w_giou)
    taken, pairs = set(), []
    for j in range(cost.shape[1]):
        i = min((i for i in range(cost.shape[0]) if i not in taken), key=lambda i: cost[i, j])
        taken.add(i)
        pairs.append((i, j))
    pairs.sort()
    return (torch.tensor([p for p, _ in pairs], dtype=torch.int64),
            torch.tensor([j for _, j in pairs], dtype=torch.int64))


@pytest.mark.parametrize("wrong", [swapped_order, sorted_by_target, maximised, greedy])
def test_hungarian_match_mistakes_fail(wrong):
    hidden_fails(run_test_cells(NOTEBOOK, "hungarian_match", wrong))


# ---- the hidden cases have one right answer ------------------------------------------------


def hidden_cases(function: str) -> list[dict]:
    """The cases of a hidden test cell, captured by running it with a stand-in ``grading.check``."""
    cell = next(c for c in notebook_cells(NOTEBOOK)
                if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == f"hidden_{function}")
    namespace = setup_namespace(NOTEBOOK)
    captured = []

    real = namespace["grading"]
    shim = type("Grading", (), {})()
    shim.check = lambda check_id, fn, cases, **kwargs: captured.extend(cases)
    for name in ("rand", "randn", "randint", "seeded"):
        setattr(shim, name, getattr(real, name))
    namespace["grading"] = shim
    namespace[function] = None
    exec("".join(cell["source"]), namespace)
    return captured


def test_hidden_matchings_have_a_unique_optimum():
    """The best assignment beats every other by a margin far above float round-off."""
    cases = hidden_cases("hungarian_match")
    assert len(cases) >= 6
    for case in cases:
        weights = {k: case.get(k, d) for k, d in (("w_class", 1.0), ("w_l1", 5.0), ("w_giou", 2.0))}
        cost = _cost(case["pred_logits"], case["pred_boxes"], case["tgt_labels"], case["tgt_boxes"], **weights)
        if cost.shape[1] == 0:
            continue
        rows, cols = linear_sum_assignment(cost)
        best = cost[rows, cols].sum()
        second = np.inf
        for i, j in zip(rows, cols, strict=True):  # the runner-up avoids at least one optimal pair
            banned = cost.copy()
            banned[i, j] = 1e9
            r, c = linear_sum_assignment(banned)
            second = min(second, banned[r, c].sum())
        assert second - best > 1e-2, f"near-tie: best {best}, runner-up {second}"


def test_hidden_matchings_are_not_the_identity():
    """Sorting by target or by prediction must make a difference in some hidden case."""
    permuted = 0
    for case in hidden_cases("hungarian_match"):
        weights = {k: case.get(k, d) for k, d in (("w_class", 1.0), ("w_l1", 5.0), ("w_giou", 2.0))}
        _, cols = scipy_match(case["pred_logits"], case["pred_boxes"], case["tgt_labels"], case["tgt_boxes"], **weights)
        permuted += bool((cols[1:] < cols[:-1]).any()) if len(cols) > 1 else 0
    assert permuted >= 3
