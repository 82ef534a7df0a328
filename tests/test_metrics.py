"""segcourse.metrics: hand-computed tables, the ignore label, sklearn agreement, evaluate."""

import math

import pytest
import sklearn.metrics
import torch

from segcourse.metrics import confusion_matrix, evaluate, segmentation_scores

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
