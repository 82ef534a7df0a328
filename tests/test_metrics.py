"""segcourse.metrics: hand-computed tables, the ignore label, sklearn agreement, evaluate."""

import math

import pytest
import sklearn.metrics
import torch

from segcourse.metrics import (
    boundary_band,
    boundary_miou,
    confusion_matrix,
    evaluate,
    segmentation_scores,
)

# A 2x3 example worked out by hand (3 classes):
#   target  [[0, 0, 1],     pred  [[0, 1, 1],
#            [2, 2, 255]]          [2, 0, 0]]
# The last pixel is ignored. Pairs (target, pred): (0,0) (0,1) (1,1) (2,2) (2,0).
#   conf = [[1, 1, 0],      TP = [1, 1, 1], T (row sums) = [2, 1, 2], P (col sums) = [2, 2, 1]
#           [0, 1, 0],      union = T + P - TP = [3, 2, 2]
#           [1, 0, 1]]      IoU = [1/3, 1/2, 1/2]; class accuracy = [1/2, 1, 1/2]
# pixel accuracy = 3/5; mean accuracy = 2/3; mean IoU = 4/9;
# fw IoU = 2/5 * 1/3 + 1/5 * 1/2 + 2/5 * 1/2 = 2/15 + 3/10 = 13/30
TARGET = torch.tensor([[0, 0, 1], [2, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [2, 0, 0]])
CONF = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_confusion_matrix_hand_computed():
    conf = confusion_matrix(PRED, TARGET, num_classes=3)
    assert conf.dtype == torch.int64 and conf.shape == (3, 3)
    assert torch.equal(conf, CONF)


def test_confusion_matrix_batched_equals_sum_of_images():
    pred, target = torch.stack([PRED, PRED.flip(0)]), torch.stack([TARGET, TARGET.flip(0)])
    assert torch.equal(confusion_matrix(pred, target, 3), 2 * CONF)


def test_ignored_pixels_are_not_counted_whatever_the_prediction():
    target = torch.full((4, 4), 255)
    target[0, 0] = 1
    pred = torch.randint(0, 2, (4, 4))
    pred[0, 0] = 1
    assert torch.equal(confusion_matrix(pred, target, 2), torch.tensor([[0, 0], [0, 1]]))


def test_confusion_matrix_matches_sklearn():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 13), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.1] = 255
    pred = torch.randint(0, 5, (3, 17, 13), generator=gen)
    keep = target != 255
    expected = sklearn.metrics.confusion_matrix(target[keep], pred[keep], labels=range(5))
    assert torch.equal(confusion_matrix(pred, target, 5), torch.from_numpy(expected))


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "same shape"),
        (torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long), "outside"),
        (torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), "outside"),
    ],
)
def test_confusion_matrix_rejects_bad_input(pred, target, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(pred, target, num_classes=3)


def test_scores_hand_computed():
    scores = segmentation_scores(CONF)
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
    assert scores["mean_accuracy"] == pytest.approx(2 / 3)
    assert scores["mean_iou"] == pytest.approx(4 / 9)
    assert scores["fw_iou"] == pytest.approx(13 / 30)
    torch.testing.assert_close(scores["iou"], torch.tensor([1 / 3, 1 / 2, 1 / 2]).double())
    torch.testing.assert_close(scores["class_accuracy"], torch.tensor([0.5, 1, 0.5]).double())


def test_absent_class_is_nan_and_left_out_of_the_mean():
    # class 2 never appears in target or prediction
    conf = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), num_classes=3)
    scores = segmentation_scores(conf)
    assert math.isnan(scores["iou"][2])
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    scores = segmentation_scores(confusion_matrix(target.clone(), target, num_classes=6))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
        assert scores[key] == pytest.approx(1.0), key


def test_scores_reject_non_square():
    with pytest.raises(ValueError, match="square"):
        segmentation_scores(torch.zeros(2, 3))


class _Oracle(torch.nn.Module):
    """Logits (N, C, H, W) whose argmax is the first image channel (a class id)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return torch.nn.functional.one_hot(images[:, 0].long(), self.num_classes).permute(
            0, 3, 1, 2
        )


def test_evaluate_on_a_loader():
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (4, 2, 5, 5), generator=gen)  # 4 batches of 2
    preds = masks.clone()
    preds[0, 0, 0, 0] = (masks[0, 0, 0, 0] + 1) % 3  # one wrong pixel in the first batch
    loader = [
        (p[:, None].float().expand(-1, 3, -1, -1), m) for p, m in zip(preds, masks, strict=True)
    ]
    model = _Oracle(3).train()

    scores = evaluate(model, loader, num_classes=3, progress=False)
    assert scores["pixel_accuracy"] == pytest.approx(1 - 1 / 200)
    assert int(scores["confusion"].sum()) == 200
    assert isinstance(scores["mean_iou"], float)
    assert model.training, "evaluate should restore the model's mode"

    first = evaluate(model, loader, num_classes=3, max_batches=1, progress=False)
    assert int(first["confusion"].sum()) == 50
    assert first["pixel_accuracy"] == pytest.approx(49 / 50)


def test_evaluate_reports_boundary_miou():
    gen = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 3, (3, 2, 6, 6), generator=gen)  # 3 batches of 2
    preds = torch.randint(0, 3, masks.shape, generator=gen)
    loader = [
        (p[:, None].float().expand(-1, 3, -1, -1), m) for p, m in zip(preds, masks, strict=True)
    ]
    scores = evaluate(_Oracle(3), loader, num_classes=3, progress=False)
    expected = boundary_miou(preds.flatten(0, 1), masks.flatten(0, 1), 3, width=3)
    assert scores["boundary_miou"] == pytest.approx(expected)
    perfect = [(m[:, None].float().expand(-1, 3, -1, -1), m) for m in masks]
    assert evaluate(_Oracle(3), perfect, num_classes=3, progress=False)["boundary_miou"] == 1.0


# ---------------------------------------------------------------------------------------------
# Boundary band and boundary mIoU: closed forms on small cases


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_band_around_a_straight_edge(width):
    # Columns 0..4 class 0, 5..9 class 1: a pixel is in the band when a column of the other
    # class is within `width` columns, i.e. columns 5 - width .. 4 + width (2 * width columns).
    target = torch.zeros(6, 10, dtype=torch.int64)
    target[:, 5:] = 1
    band = boundary_band(target, width)
    assert band.dtype == torch.bool and band.shape == target.shape
    columns = torch.zeros(10, dtype=torch.bool)
    columns[5 - width : 5 + width] = True
    assert torch.equal(band, columns.expand(6, 10))


@pytest.mark.parametrize("width", [1, 2, 3])
def test_band_around_one_pixel_is_a_square(width):
    # Chessboard distance: the (2w + 1)-square around the pixel, clipped by the image border.
    target = torch.zeros(9, 9, dtype=torch.int64)
    target[4, 4] = 2
    band = boundary_band(target, width)
    assert band.sum() == (2 * width + 1) ** 2
    assert band[4 - width : 5 + width, 4 - width : 5 + width].all()
    corner = torch.zeros(9, 9, dtype=torch.int64)
    corner[0, 0] = 1
    assert boundary_band(corner, width).sum() == (width + 1) ** 2, "the border is no boundary"


def test_band_ignores_void_and_handles_batches_and_width_zero():
    target = torch.zeros(5, 5, dtype=torch.int64)
    target[:, 3:] = 255  # void is not another class, and never in the band
    assert not boundary_band(target, 2).any()
    target[0, 0] = 1
    band = boundary_band(target, 1)
    assert torch.equal(band[:2, :2], torch.ones(2, 2, dtype=torch.bool))
    assert band.sum() == 4 and not band[:, 3:].any()
    batch = torch.stack([target, target.flip(1)])
    expected = torch.stack([band, boundary_band(target.flip(1), 1)])
    assert torch.equal(boundary_band(batch, 1), expected)
    assert not boundary_band(batch, 0).any()
    with pytest.raises(ValueError, match="width"):
        boundary_band(target, -1)


def test_boundary_miou_hand_computed():
    # Target: columns 0..3 class 0, 4..7 class 1; the prediction moves the edge one column
    # right (column 4 predicted 0). Band (width 1): columns 3 and 4, 4 pixels each.
    #   in the band: (t0, p0) x 4 at column 3, (t1, p0) x 4 at column 4
    #   IoU_0 = 4 / (4 + 8 - 4) = 1/2, IoU_1 = 0 / (4 + 0 - 0) = 0  -> boundary mIoU 1/4
    # whereas on the whole image IoU_0 = 16/20, IoU_1 = 12/16 -> mIoU 0.775.
    target = torch.zeros(4, 8, dtype=torch.int64)
    target[:, 4:] = 1
    pred = torch.zeros_like(target)
    pred[:, 5:] = 1
    assert boundary_miou(pred, target, num_classes=2, width=1) == pytest.approx(0.25)
    scores = segmentation_scores(confusion_matrix(pred, target, 2))
    assert scores["mean_iou"] == pytest.approx(0.775)
    # A class absent from the band in both is left out of the mean (class 2 here).
    assert boundary_miou(pred, target, num_classes=3, width=1) == pytest.approx(0.25)
    assert boundary_miou(target, target, 2, width=3) == 1.0
    assert math.isnan(boundary_miou(pred, torch.zeros_like(target), 2)), "no boundary: NaN"
    with pytest.raises(ValueError, match="same shape"):
        boundary_miou(pred[:2], target, 2)
