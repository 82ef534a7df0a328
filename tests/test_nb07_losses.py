"""Notebook 07's test cells: independent correct implementations earn every point, and each
common mistake fails the hidden test cell with a message that says what differs.

The implementations below are written from the docstrings, with PyTorch's own losses
(``F.cross_entropy``, ``F.nll_loss``, ``F.binary_cross_entropy``), NumPy in float64, or
scikit-learn's metrics; none of them copies the notebook's solution. The test cells (visible and
hidden) are run by ``checks.run_test_cells`` against the references in
``autograder/references/07_losses`` (recorded by ``segcourse references``). A few more tests pin
the notebook's formulas to outside sources: torchvision's ``sigmoid_focal_loss``, scikit-learn's
F1 / precision / recall / Jaccard, and the lecture's worked Dice example.
"""

from __future__ import annotations

import doctest
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `checks`, however pytest is run

from checks import assert_all_pass, notebook_cells, run_test_cells, solution_namespace  # noqa: E402

NOTEBOOK = "07_losses"


def _like(value, reference: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=reference.dtype, device=reference.device)


# --------------------------------------------------------------------------------------------
# Independent correct implementations
# --------------------------------------------------------------------------------------------

# cross_entropy


def torch_cross_entropy(logits, target, ignore_index=255):
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0  # the docstring's pinned 0 (PyTorch would give NaN)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def nll_sum_cross_entropy(logits, target, ignore_index=255):
    total = F.nll_loss(
        F.log_softmax(logits, dim=1), target, ignore_index=ignore_index, reduction="sum"
    )
    return total / (target != ignore_index).sum().clamp(min=1)


def onehot_cross_entropy(logits, target, ignore_index=255):
    """-sum_c onehot * log_softmax in float64, the max subtracted by hand, masked mean."""
    z = logits.double()
    shifted = z - z.amax(dim=1, keepdim=True)
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), z.shape[1]).movedim(-1, 1)
    per_pixel = -(onehot * log_probs).sum(dim=1) * valid
    return (per_pixel.sum() / max(int(valid.sum()), 1)).to(logits.dtype)


# binary losses: per-element terms from F.binary_cross_entropy (which clamps log at -100)


def _bce_terms(p_hat):
    """(-log p_hat, -log(1 - p_hat)), each clamped at 100, from PyTorch's own BCE."""
    ones, zeros = torch.ones_like(p_hat), torch.zeros_like(p_hat)
    return (
        F.binary_cross_entropy(p_hat, ones, reduction="none"),
        F.binary_cross_entropy(p_hat, zeros, reduction="none"),
    )


def _numpy_logs(p_hat):
    x = p_hat.detach().double().cpu().numpy()
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(x), -100.0), np.maximum(np.log1p(-x), -100.0)


def torch_weighted_bce(p_hat, p, beta):
    pos, neg = _bce_terms(p_hat)
    return (beta * p * pos + (1 - p) * neg).mean()


def numpy_weighted_bce(p_hat, p, beta):
    log_p, log_q = _numpy_logs(p_hat)
    q = p.double().cpu().numpy()
    return _like(-(beta * q * log_p + (1 - q) * log_q).mean(), p_hat)


def torch_balanced_bce(p_hat, p, beta):
    pos, neg = _bce_terms(p_hat)
    return (beta * p * pos + (1 - beta) * (1 - p) * neg).mean()


def numpy_balanced_bce(p_hat, p, beta):
    log_p, log_q = _numpy_logs(p_hat)
    q = p.double().cpu().numpy()
    return _like(-(beta * q * log_p + (1 - beta) * (1 - q) * log_q).mean(), p_hat)


def torch_focal_loss(p_hat, p, alpha, gamma):
    pos, neg = _bce_terms(p_hat)
    positive = alpha * torch.pow(1 - p_hat, gamma) * p * pos
    negative = (1 - alpha) * torch.pow(p_hat, gamma) * (1 - p) * neg
    return (positive + negative).mean()


def numpy_focal_loss(p_hat, p, alpha, gamma):
    log_p, log_q = _numpy_logs(p_hat)
    x, q = p_hat.detach().double().cpu().numpy(), p.double().cpu().numpy()
    # np.power(0.0, 0.0) == 1.0, as the docstring pins
    loss = alpha * np.power(1 - x, gamma) * q * log_p
    loss = loss + (1 - alpha) * np.power(x, gamma) * (1 - q) * log_q
    return _like(-loss.mean(), p_hat)


# overlap losses


def torch_dice_loss(p_hat, p, smooth=1.0):
    inter, total = (p_hat * p).sum(), p_hat.sum() + p.sum()
    if smooth == 0 and float(total) == 0:
        return p_hat.sum() * 0.0
    return 1 - (2 * inter + smooth) / (total + smooth)


def numpy_dice_loss(p_hat, p, smooth=1.0):
    x, q = p_hat.detach().double().cpu().numpy(), p.double().cpu().numpy()
    numerator, denominator = 2 * (x * q).sum() + smooth, x.sum() + q.sum() + smooth
    return _like(0.0 if denominator == 0 else 1 - numerator / denominator, p_hat)


def torch_tversky_index(p_hat, p, beta):
    tp = (p * p_hat).sum()
    fp = ((1 - p) * p_hat).sum()
    fn = (p * (1 - p_hat)).sum()
    denominator = tp + beta * fp + (1 - beta) * fn
    return torch.where(denominator > 0, tp / denominator.clamp(min=1e-300), tp.new_ones(()))


def salehi_tversky_index(p_hat, p, beta):
    """Salehi et al.'s form TP / (TP + a FP + b FN) with a = beta and b = 1 - beta, in NumPy."""
    x, q = p_hat.detach().double().cpu().numpy().ravel(), p.double().cpu().numpy().ravel()
    a, b = beta, 1 - beta
    tp, fp, fn = np.dot(x, q), np.dot(x, 1 - q), np.dot(1 - x, q)
    denominator = tp + a * fp + b * fn
    return _like(1.0 if denominator == 0 else tp / denominator, p_hat)


# metrics


def sklearn_confusion_matrix(pred, target, num_classes, ignore_index=255):
    keep = (target != ignore_index).cpu().numpy().ravel()
    y_true = target.cpu().numpy().ravel()[keep]
    y_pred = pred.cpu().numpy().ravel()[keep]
    if y_true.size == 0:  # every pixel ignored (scikit-learn refuses empty input)
        return torch.zeros(num_classes, num_classes, dtype=torch.int64, device=pred.device)
    conf = skm.confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))
    return torch.as_tensor(conf, dtype=torch.int64, device=pred.device)


def scatter_confusion_matrix(pred, target, num_classes, ignore_index=255):
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=pred.device)
    keep = target != ignore_index
    ones = torch.ones(int(keep.sum()), dtype=torch.int64, device=pred.device)
    conf.index_put_((target[keep].long(), pred[keep].long()), ones, accumulate=True)
    return conf


def _labels_from_confusion(conf):
    """Expand a confusion matrix back into (y_true, y_pred) label arrays."""
    counts = conf.cpu().numpy()
    rows, cols = np.nonzero(counts)
    repeats = counts[rows, cols]
    return np.repeat(rows, repeats), np.repeat(cols, repeats)


def sklearn_segmentation_metrics(conf):
    num_classes = conf.shape[0]
    y_true, y_pred = _labels_from_confusion(conf)
    if y_true.size == 0:  # no pixel at all: every value NaN (scikit-learn refuses empty input)
        nan = math.nan
        iou = torch.full((num_classes,), nan, dtype=torch.float64)
        return {
            "pixel_accuracy": nan,
            "mean_accuracy": nan,
            "mean_iou": nan,
            "fw_iou": nan,
            "iou": iou,
        }
    in_truth = sorted(set(y_true.tolist()))
    with_union = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    iou = np.full(num_classes, np.nan)
    iou[with_union] = skm.jaccard_score(
        y_true, y_pred, labels=with_union, average=None, zero_division=0
    )
    support = np.bincount(y_true, minlength=num_classes)
    return {
        "pixel_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "mean_accuracy": float(
            skm.recall_score(y_true, y_pred, labels=in_truth, average="macro", zero_division=0)
        ),
        "mean_iou": float(np.mean(iou[with_union])),
        "fw_iou": float(np.sum(support[in_truth] * iou[in_truth]) / support.sum()),
        "iou": torch.as_tensor(iou, dtype=torch.float64),
    }


def fcn_score_metrics(conf):
    """The FCN authors' evaluation code (score.py), transcribed to NumPy."""
    hist = conf.cpu().numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    freq = hist.sum(1) / hist.sum()
    # score.py sums over an empty set for an all-zero matrix (0.0); the docstring pins NaN
    fw_iou = float((freq[freq > 0] * iu[freq > 0]).sum()) if hist.sum() > 0 else math.nan
    return {
        "pixel_accuracy": float(acc),
        "mean_accuracy": float(acc_cls),
        "mean_iou": float(np.nanmean(iu)),
        "fw_iou": fw_iou,
        "iou": torch.as_tensor(iu, dtype=torch.float64),
    }


CORRECT = [
    ("cross_entropy", torch_cross_entropy),
    ("cross_entropy", nll_sum_cross_entropy),
    ("cross_entropy", onehot_cross_entropy),
    ("weighted_bce", torch_weighted_bce),
    ("weighted_bce", numpy_weighted_bce),
    ("balanced_bce", torch_balanced_bce),
    ("balanced_bce", numpy_balanced_bce),
    ("focal_loss", torch_focal_loss),
    ("focal_loss", numpy_focal_loss),
    ("dice_loss", torch_dice_loss),
    ("dice_loss", numpy_dice_loss),
    ("tversky_index", torch_tversky_index),
    ("tversky_index", salehi_tversky_index),
    ("confusion_matrix", sklearn_confusion_matrix),
    ("confusion_matrix", scatter_confusion_matrix),
    ("segmentation_metrics", sklearn_segmentation_metrics),
    ("segmentation_metrics", fcn_score_metrics),
]
FUNCTIONS = sorted({function for function, _ in CORRECT})


@pytest.mark.parametrize(
    ("function", "implementation"), CORRECT, ids=[impl.__name__ for _, impl in CORRECT]
)
def test_correct_implementation_passes_every_test_cell(function, implementation):
    assert_all_pass(NOTEBOOK, function, implementation)


# --------------------------------------------------------------------------------------------
# Common mistakes
# --------------------------------------------------------------------------------------------

# cross_entropy


def ignored_counted_in_mean(logits, target, ignore_index=255):
    total = F.nll_loss(
        F.log_softmax(logits, dim=1), target, ignore_index=ignore_index, reduction="sum"
    )
    return total / target.numel()


def naive_softmax_log(logits, target, ignore_index=255):
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)  # overflows for big logits
    valid = target != ignore_index
    picked = probs.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    return -(torch.log(picked) * valid).sum() / valid.sum().clamp(min=1)


def nan_when_all_ignored(logits, target, ignore_index=255):
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def ignore_index_hardcoded(logits, target, ignore_index=255):
    return torch_cross_entropy(logits, target)  # the argument is not passed on: always 255


def summed_not_averaged(logits, target, ignore_index=255):
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")


# binary losses


def log_of_zero_weighted(p_hat, p, beta):
    return -(beta * p * torch.log(p_hat) + (1 - p) * torch.log(1 - p_hat)).mean()


def epsilon_instead_of_clamp(p_hat, p, beta):
    eps = 1e-7
    return -(beta * p * torch.log(p_hat + eps) + (1 - p) * torch.log(1 - p_hat + eps)).mean()


def beta_on_negatives(p_hat, p, beta):
    pos, neg = _bce_terms(p_hat)
    return (p * pos + beta * (1 - p) * neg).mean()


def beta_on_both_terms(p_hat, p, beta):
    return beta * F.binary_cross_entropy(p_hat, p)


def summed_weighted_bce(p_hat, p, beta):
    pos, neg = _bce_terms(p_hat)
    return (beta * p * pos + (1 - p) * neg).sum()


def balanced_swapped(p_hat, p, beta):
    return torch_balanced_bce(p_hat, p, 1 - beta)


def balanced_without_negative_weight(p_hat, p, beta):
    return torch_weighted_bce(p_hat, p, beta)


def log_of_zero_balanced(p_hat, p, beta):
    return -(beta * p * torch.log(p_hat) + (1 - beta) * (1 - p) * torch.log(1 - p_hat)).mean()


def focal_alpha_swapped(p_hat, p, alpha, gamma):
    return torch_focal_loss(p_hat, p, 1 - alpha, gamma)


def focal_modulation_swapped(p_hat, p, alpha, gamma):
    pos, neg = _bce_terms(p_hat)
    return (
        alpha * p_hat**gamma * p * pos + (1 - alpha) * (1 - p_hat) ** gamma * (1 - p) * neg
    ).mean()


def focal_without_alpha(p_hat, p, alpha, gamma):
    pos, neg = _bce_terms(p_hat)
    return ((1 - p_hat) ** gamma * p * pos + p_hat**gamma * (1 - p) * neg).mean()


def focal_gamma_ignored(p_hat, p, alpha, gamma):
    return torch_focal_loss(p_hat, p, alpha, 2.0)


def log_of_zero_focal(p_hat, p, alpha, gamma):
    positive = alpha * (1 - p_hat) ** gamma * p * torch.log(p_hat)
    negative = (1 - alpha) * p_hat**gamma * (1 - p) * torch.log(1 - p_hat)
    return -(positive + negative).mean()


# dice_loss


def smooth_only_in_denominator(p_hat, p, smooth=1.0):
    return 1 - 2 * (p_hat * p).sum() / (p_hat.sum() + p.sum() + smooth)


def smooth_doubled_in_numerator(p_hat, p, smooth=1.0):
    total = p_hat.sum() + p.sum()
    if smooth == 0 and float(total) == 0:
        return p_hat.sum() * 0.0
    return 1 - 2 * ((p_hat * p).sum() + smooth) / (total + smooth)


def squared_denominator(p_hat, p, smooth=1.0):
    if smooth == 0 and float(p_hat.sum() + p.sum()) == 0:
        return p_hat.sum() * 0.0
    return 1 - (2 * (p_hat * p).sum() + smooth) / ((p_hat**2).sum() + (p**2).sum() + smooth)


def nan_for_empty_masks(p_hat, p, smooth=1.0):
    return 1 - (2 * (p_hat * p).sum() + smooth) / (p_hat.sum() + p.sum() + smooth)


def mean_instead_of_sum(p_hat, p, smooth=1.0):
    total = p_hat.mean() + p.mean()
    if smooth == 0 and float(total) == 0:
        return p_hat.sum() * 0.0
    return 1 - (2 * (p_hat * p).mean() + smooth) / (total + smooth)


def dice_per_image(p_hat, p, smooth=1.0):
    losses = [torch_dice_loss(a, b, smooth) for a, b in zip(p_hat, p, strict=True)]
    return torch.stack(losses).mean()


# tversky_index


def tversky_weights_swapped(p_hat, p, beta):
    return torch_tversky_index(p_hat, p, 1 - beta)


def tversky_loss_not_index(p_hat, p, beta):
    return 1 - torch_tversky_index(p_hat, p, beta)


def tversky_nan_when_empty(p_hat, p, beta):
    tp = (p * p_hat).sum()
    return tp / (tp + beta * ((1 - p) * p_hat).sum() + (1 - beta) * (p * (1 - p_hat)).sum())


def tversky_without_tp_in_denominator(p_hat, p, beta):
    tp = (p * p_hat).sum()
    rest = beta * ((1 - p) * p_hat).sum() + (1 - beta) * (p * (1 - p_hat)).sum()
    return torch.where(rest > 0, tp / (tp + 2 * rest), tp.new_ones(()))


# confusion_matrix


def transposed_confusion(pred, target, num_classes, ignore_index=255):
    return sklearn_confusion_matrix(pred, target, num_classes, ignore_index).T


def ignore_clamped_to_last_class(pred, target, num_classes, ignore_index=255):
    target = torch.where(target == ignore_index, num_classes - 1, target)
    return sklearn_confusion_matrix(pred, target, num_classes, ignore_index)


def shape_from_data(pred, target, num_classes, ignore_index=255):
    keep = target != ignore_index
    size = int(max(pred[keep].max(), target[keep].max())) + 1 if bool(keep.any()) else 0
    return sklearn_confusion_matrix(pred, target, max(size, 1), ignore_index)


def ignore_index_default_only(pred, target, num_classes, ignore_index=255):
    keep = target != 255
    return sklearn_confusion_matrix(pred[keep], target[keep], num_classes, -1)


# segmentation_metrics


def plain_mean_with_nans(conf):
    scores = fcn_score_metrics(conf)
    iou, hist = scores["iou"], conf.double()
    accuracy = hist.diag() / hist.sum(1)
    return {**scores, "mean_iou": float(iou.mean()), "mean_accuracy": float(accuracy.mean())}


def absent_classes_as_zero(conf):
    scores = fcn_score_metrics(conf)
    hist = conf.double()
    accuracy = (hist.diag() / hist.sum(1)).nan_to_num(0.0)
    return {
        **scores,
        "mean_iou": float(scores["iou"].nan_to_num(0.0).mean()),
        "mean_accuracy": float(accuracy.mean()),
    }


def mean_iou_over_truth_classes_only(conf):
    scores = fcn_score_metrics(conf)
    in_truth = conf.sum(1) > 0
    return {**scores, "mean_iou": float(scores["iou"][in_truth].mean())}


def metrics_of_transposed(conf):
    return fcn_score_metrics(conf.T)


def fw_by_predicted_frequency(conf):
    scores = fcn_score_metrics(conf)
    predicted = conf.double().sum(0)
    iou = scores["iou"]
    fw = float((predicted * iou).nansum() / predicted.sum())
    return {**scores, "fw_iou": fw}


def undefined_iou_as_one(conf):
    scores = fcn_score_metrics(conf)
    iou = scores["iou"].nan_to_num(1.0)
    return {**scores, "iou": iou, "mean_iou": float(iou.mean())}


MUTANTS = {
    "cross_entropy": [
        ignored_counted_in_mean,
        naive_softmax_log,
        nan_when_all_ignored,
        ignore_index_hardcoded,
        summed_not_averaged,
    ],
    "weighted_bce": [
        log_of_zero_weighted,
        epsilon_instead_of_clamp,
        beta_on_negatives,
        beta_on_both_terms,
        summed_weighted_bce,
    ],
    "balanced_bce": [balanced_swapped, balanced_without_negative_weight, log_of_zero_balanced],
    "focal_loss": [
        focal_alpha_swapped,
        focal_modulation_swapped,
        focal_without_alpha,
        focal_gamma_ignored,
        log_of_zero_focal,
    ],
    "dice_loss": [
        smooth_only_in_denominator,
        smooth_doubled_in_numerator,
        squared_denominator,
        nan_for_empty_masks,
        mean_instead_of_sum,
        dice_per_image,
    ],
    "tversky_index": [
        tversky_weights_swapped,
        tversky_loss_not_index,
        tversky_nan_when_empty,
        tversky_without_tp_in_denominator,
    ],
    "confusion_matrix": [
        transposed_confusion,
        ignore_clamped_to_last_class,
        shape_from_data,
        ignore_index_default_only,
    ],
    "segmentation_metrics": [
        plain_mean_with_nans,
        absent_classes_as_zero,
        mean_iou_over_truth_classes_only,
        metrics_of_transposed,
        fw_by_predicted_frequency,
        undefined_iou_as_one,
    ],
}
MUTANT_CASES = [(function, mutant) for function, table in MUTANTS.items() for mutant in table]


# --------------------------------------------------------------------------------------------
# Review of the student release (regression cases): more readings of the docstrings that must
# earn every point, and more mistakes that must lose some
# --------------------------------------------------------------------------------------------


def _clog(x):
    return torch.log(x).clamp(min=-100)


def flat_float64_cross_entropy(logits, target, ignore_index=255):
    """Pixels as rows, boolean indexing, log_softmax in float64, cast back; 0 when all ignored."""
    z = logits.double().movedim(1, -1).reshape(-1, logits.shape[1])
    t = target.reshape(-1)
    keep = t != ignore_index
    z, t = z[keep], t[keep]
    if t.numel() == 0:
        return logits.sum() * 0.0
    return (-torch.log_softmax(z, dim=1)[torch.arange(t.numel()), t].mean()).to(logits.dtype)


def log1p_float64_weighted_bce(p_hat, p, beta):
    q, t = p_hat.double(), p.double()
    log_p = torch.maximum(torch.log(q), q.new_tensor(-100.0))
    log_q = torch.maximum(torch.log1p(-q), q.new_tensor(-100.0))
    return (-(beta * t * log_p + (1 - t) * log_q)).mean().to(p_hat.dtype)


def log1p_float64_balanced_bce(p_hat, p, beta):
    q, t = p_hat.double(), p.double()
    log_p, log_q = torch.log(q).clamp(min=-100), torch.log1p(-q).clamp(min=-100)
    return (-(beta * t * log_p + (1 - beta) * (1 - t) * log_q)).mean().to(p_hat.dtype)


def two_sums_focal_loss(p_hat, p, alpha, gamma):
    positive = -alpha * p * torch.pow(1 - p_hat, gamma) * _clog(p_hat)
    negative = -(1 - alpha) * (1 - p) * torch.pow(p_hat, gamma) * _clog(1 - p_hat)
    return (positive.sum() + negative.sum()) / p_hat.numel()


def soft_counts_dice_loss(p_hat, p, smooth=1.0):
    """2TP + FP + FN in the denominator (= sum p + sum p_hat), torch.where for the empty case."""
    tp, fp, fn = (p * p_hat).sum(), ((1 - p) * p_hat).sum(), (p * (1 - p_hat)).sum()
    denominator = 2 * tp + fp + fn + smooth
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(
        denominator == 0, torch.zeros_like(denominator), 1 - (2 * tp + smooth) / safe
    )


def mixture_tversky_index(p_hat, p, beta):
    """TP + b FP + (1 - b) FN = b sum(p_hat) + (1 - b) sum(p)."""
    tp = (p * p_hat).sum()
    denominator = beta * p_hat.sum() + (1 - beta) * p.sum()
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, torch.ones_like(denominator), tp / safe)


def bincount_confusion_matrix(pred, target, num_classes, ignore_index=255):
    keep = target != ignore_index
    index = target[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def python_loop_segmentation_metrics(conf):
    c = conf.shape[0]
    n = [[int(conf[i, j]) for j in range(c)] for i in range(c)]
    truth = [sum(n[i]) for i in range(c)]
    union = [truth[i] + sum(n[j][i] for j in range(c)) - n[i][i] for i in range(c)]
    iou = [n[i][i] / union[i] if union[i] else math.nan for i in range(c)]
    accuracy = [n[i][i] / truth[i] for i in range(c) if truth[i]]
    defined = [v for v in iou if not math.isnan(v)]
    total = sum(truth)
    return {
        "pixel_accuracy": sum(n[i][i] for i in range(c)) / total if total else math.nan,
        "mean_accuracy": sum(accuracy) / len(accuracy) if accuracy else math.nan,
        "mean_iou": sum(defined) / len(defined) if defined else math.nan,
        "fw_iou": sum(truth[i] * iou[i] for i in range(c) if truth[i]) / total
        if total
        else math.nan,
        "iou": torch.tensor(iou, dtype=torch.float64),
    }


REVIEW_CORRECT = [
    ("cross_entropy", flat_float64_cross_entropy),
    ("weighted_bce", log1p_float64_weighted_bce),
    ("balanced_bce", log1p_float64_balanced_bce),
    ("focal_loss", two_sums_focal_loss),
    ("dice_loss", soft_counts_dice_loss),
    ("tversky_index", mixture_tversky_index),
    ("confusion_matrix", bincount_confusion_matrix),
    ("segmentation_metrics", python_loop_segmentation_metrics),
]


@pytest.mark.parametrize(
    ("function", "implementation"),
    REVIEW_CORRECT,
    ids=[impl.__name__ for _, impl in REVIEW_CORRECT],
)
def test_review_reading_passes_every_test_cell(function, implementation):
    outcome = run_test_cells(NOTEBOOK, function, implementation)
    failed = {grade_id: message for grade_id, message in outcome.items() if message}
    assert not failed, failed


def log_of_softmax(logits, target, ignore_index=255):
    valid = target != ignore_index
    probs = torch.softmax(logits, dim=1)  # stable, but underflows to 0 before the log
    picked = probs.gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    return -(torch.log(picked) * valid).sum() / valid.sum().clamp(min=1)


def cross_entropy_mean_of_image_means(logits, target, ignore_index=255):
    losses = [
        torch_cross_entropy(z[None], t[None], ignore_index)
        for z, t in zip(logits, target, strict=True)
    ]
    return torch.stack(losses).mean()


def cross_entropy_mean_over_classes(logits, target, ignore_index=255):
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).movedim(-1, 1)
    per_pixel = -(onehot * F.log_softmax(logits, dim=1)).mean(dim=1) * valid  # divides by C too
    return per_pixel.sum() / valid.sum().clamp(min=1)


def probability_clamped_weighted_bce(p_hat, p, beta):
    q = p_hat.clamp(1e-7, 1 - 1e-7)  # log(1e-7) = -16, not the pinned -100
    return -(beta * p * torch.log(q) + (1 - p) * torch.log(1 - q)).mean()


def weight_normalised_weighted_bce(p_hat, p, beta):
    weight = beta * p + (1 - p)
    return F.binary_cross_entropy(p_hat, p, weight=weight, reduction="sum") / weight.sum()


def binarised_target_weighted_bce(p_hat, p, beta):
    return torch_weighted_bce(p_hat, (p > 0.5).to(p.dtype), beta)


def probability_clamped_balanced_bce(p_hat, p, beta):
    q = p_hat.clamp(1e-7, 1 - 1e-7)
    return -(beta * p * torch.log(q) + (1 - beta) * (1 - p) * torch.log(1 - q)).mean()


def beta_from_the_data_balanced_bce(p_hat, p, beta):
    return torch_balanced_bce(p_hat, p, float(1 - p.float().mean()))  # the argument is ignored


def binarised_target_balanced_bce(p_hat, p, beta):
    return torch_balanced_bce(p_hat, (p > 0.5).to(p.dtype), beta)


def probability_clamped_focal(p_hat, p, alpha, gamma):
    return torch_focal_loss(p_hat.clamp(1e-7, 1 - 1e-7), p, alpha, gamma)


def torchvision_p_t_focal(p_hat, p, alpha, gamma):
    """torchvision's p_t / alpha_t form: the same for binary targets, not for soft ones."""
    ce = -(p * _clog(p_hat) + (1 - p) * _clog(1 - p_hat))
    p_t = p * p_hat + (1 - p) * (1 - p_hat)
    alpha_t = alpha * p + (1 - alpha) * (1 - p)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean()


def exp_log_power_focal(p_hat, p, alpha, gamma):
    """(1 - p_hat)**gamma as exp(gamma * log(1 - p_hat)): 0**0 becomes NaN."""
    positive = alpha * torch.exp(gamma * torch.log(1 - p_hat)) * p * _clog(p_hat)
    negative = (1 - alpha) * torch.exp(gamma * torch.log(p_hat)) * (1 - p) * _clog(1 - p_hat)
    return -(positive + negative).mean()


def smooth_twice_in_denominator(p_hat, p, smooth=1.0):
    total = p_hat.sum() + p.sum() + 2 * smooth
    return p_hat.sum() * 0.0 if float(total) == 0 else 1 - (2 * (p_hat * p).sum() + smooth) / total


def one_for_empty_masks(p_hat, p, smooth=1.0):
    total = p_hat.sum() + p.sum() + smooth
    return (
        p_hat.sum() * 0.0 + 1.0
        if float(total) == 0
        else 1 - (2 * (p_hat * p).sum() + smooth) / total
    )


def epsilon_in_dice_denominator(p_hat, p, smooth=1.0):
    return 1 - (2 * (p_hat * p).sum() + smooth) / (p_hat.sum() + p.sum() + smooth + 1e-6)


def dice_coefficient_not_loss(p_hat, p, smooth=1.0):
    return 1 - torch_dice_loss(p_hat, p, smooth)


def thresholded_dice(p_hat, p, smooth=1.0):
    return torch_dice_loss((p_hat > 0.5).to(p_hat.dtype), p, smooth)


def tversky_smoothed(p_hat, p, beta):
    tp = (p * p_hat).sum()
    rest = beta * ((1 - p) * p_hat).sum() + (1 - beta) * (p * (1 - p_hat)).sum()
    return (tp + 1) / (tp + rest + 1)


def tversky_zero_when_empty(p_hat, p, beta):
    return tversky_nan_when_empty(p_hat, p, beta).nan_to_num(0.0)


def tversky_one_only_for_two_empty_masks(p_hat, p, beta):
    """1.0 only when both masks are empty; the other zero denominators give NaN."""
    if float(p.sum()) == 0 and float(p_hat.sum()) == 0:
        return p_hat.new_ones(())
    return tversky_nan_when_empty(p_hat, p, beta)


def tversky_per_image(p_hat, p, beta):
    return torch.stack(
        [torch_tversky_index(a, b, beta) for a, b in zip(p_hat, p, strict=True)]
    ).mean()


def thresholded_tversky(p_hat, p, beta):
    return torch_tversky_index((p_hat > 0.5).to(p_hat.dtype), p, beta)


def float_confusion_matrix(pred, target, num_classes, ignore_index=255):
    return scatter_confusion_matrix(pred, target, num_classes, ignore_index).double()


def ignore_tested_on_prediction(pred, target, num_classes, ignore_index=255):
    keep = pred != ignore_index
    index = target[keep].clamp(max=num_classes - 1) * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_accuracy_with_absent_as_zero(conf):
    scores = fcn_score_metrics(conf)
    hist = conf.double()
    return {**scores, "mean_accuracy": float((hist.diag() / hist.sum(1).clamp(min=1)).mean())}


def zero_for_an_all_zero_matrix(conf):
    """Denominators clamped at 1 (a common idiom): 0.0 instead of NaN when there is no pixel."""
    scores = python_loop_segmentation_metrics(conf)
    if int(conf.sum()) == 0:
        scores.update(pixel_accuracy=0.0, mean_accuracy=0.0, mean_iou=0.0, fw_iou=0.0)
    return scores


def fcn_score_py_verbatim(conf):
    """score.py as published: its fw IU of an all-zero matrix is 0.0, not the pinned NaN."""
    scores = fcn_score_metrics(conf)
    return {**scores, "fw_iou": 0.0} if int(conf.sum()) == 0 else scores


REVIEW_MUTANTS = [
    ("cross_entropy", log_of_softmax),
    ("cross_entropy", cross_entropy_mean_of_image_means),
    ("cross_entropy", cross_entropy_mean_over_classes),
    ("weighted_bce", probability_clamped_weighted_bce),
    ("weighted_bce", weight_normalised_weighted_bce),
    ("weighted_bce", binarised_target_weighted_bce),
    ("balanced_bce", probability_clamped_balanced_bce),
    ("balanced_bce", beta_from_the_data_balanced_bce),
    ("balanced_bce", binarised_target_balanced_bce),
    ("focal_loss", probability_clamped_focal),
    ("focal_loss", torchvision_p_t_focal),
    ("focal_loss", exp_log_power_focal),
    ("dice_loss", smooth_twice_in_denominator),
    ("dice_loss", one_for_empty_masks),
    ("dice_loss", epsilon_in_dice_denominator),
    ("dice_loss", dice_coefficient_not_loss),
    ("dice_loss", thresholded_dice),
    ("tversky_index", tversky_smoothed),
    ("tversky_index", tversky_zero_when_empty),
    ("tversky_index", tversky_one_only_for_two_empty_masks),
    ("tversky_index", tversky_per_image),
    ("tversky_index", thresholded_tversky),
    ("confusion_matrix", float_confusion_matrix),
    ("confusion_matrix", ignore_tested_on_prediction),
    ("segmentation_metrics", mean_accuracy_with_absent_as_zero),
    ("segmentation_metrics", zero_for_an_all_zero_matrix),
    ("segmentation_metrics", fcn_score_py_verbatim),
]


@pytest.mark.parametrize(
    ("function", "mutant"), REVIEW_MUTANTS, ids=[mutant.__name__ for _, mutant in REVIEW_MUTANTS]
)
def test_review_mistake_fails_the_hidden_tests(function, mutant):
    outcome = run_test_cells(NOTEBOOK, function, mutant)
    assert outcome[f"hidden_{function}"], f"{mutant.__name__} passed the hidden tests"


@pytest.mark.parametrize(
    ("function", "mutant"), MUTANT_CASES, ids=[mutant.__name__ for _, mutant in MUTANT_CASES]
)
def test_common_mistake_fails_the_hidden_tests(function, mutant):
    outcome = run_test_cells(NOTEBOOK, function, mutant)
    assert outcome[f"hidden_{function}"], f"{mutant.__name__} passed the hidden tests"


def test_unimplemented_function_fails_every_cell():
    def not_implemented(*args, **kwargs):
        raise NotImplementedError()

    for function in FUNCTIONS:
        outcome = run_test_cells(NOTEBOOK, function, not_implemented)
        assert all(message for message in outcome.values()), (function, outcome)


# --------------------------------------------------------------------------------------------
# The notebook's formulas against outside sources
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def solutions():
    namespace = {}
    for name in FUNCTIONS:
        namespace.update(solution_namespace(NOTEBOOK, name))
    return namespace


def test_focal_loss_is_torchvisions_sigmoid_focal_loss(solutions):
    from torchvision.ops import sigmoid_focal_loss

    generator = torch.Generator().manual_seed(0)
    p_hat = torch.rand(4, 9, 9, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    p = (torch.rand(4, 9, 9, generator=generator) < 0.2).double()
    for alpha, gamma in [(0.25, 2.0), (0.75, 0.0), (0.5, 5.0)]:
        ours = solutions["focal_loss"](p_hat, p, alpha, gamma)
        theirs = sigmoid_focal_loss(torch.logit(p_hat), p, alpha, gamma, reduction="mean")
        assert torch.allclose(ours, theirs), (alpha, gamma)


def test_binary_overlaps_match_sklearn(solutions):
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = rng.random((6, 7)) < 0.3
        pred = rng.random((6, 7)) < 0.4
        p_hat, p = torch.tensor(pred, dtype=torch.float64), torch.tensor(truth, dtype=torch.float64)
        y_true, y_pred = truth.ravel(), pred.ravel()
        dice = 1 - solutions["dice_loss"](p_hat, p, smooth=0.0)
        assert math.isclose(float(dice), skm.f1_score(y_true, y_pred))
        tversky = solutions["tversky_index"]
        assert math.isclose(float(tversky(p_hat, p, 0.5)), skm.f1_score(y_true, y_pred))
        assert math.isclose(float(tversky(p_hat, p, 0.0)), skm.recall_score(y_true, y_pred))
        assert math.isclose(float(tversky(p_hat, p, 1.0)), skm.precision_score(y_true, y_pred))


def test_lecture_dice_example(solutions):
    a = torch.tensor(
        [
            [0.01, 0.03, 0.02, 0.02],
            [0.05, 0.12, 0.09, 0.07],
            [0.89, 0.85, 0.88, 0.91],
            [0.99, 0.97, 0.95, 0.97],
        ],
        dtype=torch.float64,
    )
    b = torch.zeros(4, 4, dtype=torch.float64)
    b[2:] = 1
    assert round(1 - float(solutions["dice_loss"](a, b, smooth=0.0)), 4) == 0.9368
    assert math.isclose(float(solutions["tversky_index"](a, b, 0.5)), 14.82 / 15.82)


def test_metrics_match_the_course_tool(solutions):
    from segcourse.metrics import confusion_matrix, segmentation_scores

    generator = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 5, (3, 8, 8), generator=generator)
    target = torch.randint(0, 4, (3, 8, 8), generator=generator)
    target[0, :2] = 255
    conf = solutions["confusion_matrix"](pred, target, 5)
    assert torch.equal(conf, confusion_matrix(pred, target, 5))
    ours, tool = solutions["segmentation_metrics"](conf), segmentation_scores(conf)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert math.isclose(ours[key], tool[key]), key
    assert torch.allclose(ours["iou"], tool["iou"], equal_nan=True)


def test_docstring_examples(solutions):
    for name in FUNCTIONS:
        function = solutions[name]
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        for test in finder.find(function, name, globs={"torch": torch, name: function}):
            runner.run(test)
        result = runner.summarize(verbose=False)
        assert result.attempted > 0 and result.failed == 0, name


def test_points_table_matches_the_cells():
    points = {}
    for cell in notebook_cells(NOTEBOOK):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            points[meta["grade_id"]] = meta["points"]
    assert sum(points.values()) == 25
    for name in FUNCTIONS:
        hidden = 3 if name == "segmentation_metrics" else 2
        assert points[f"test_{name}"] == 1 and points[f"hidden_{name}"] == hidden, name
