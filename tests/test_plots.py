"""segcourse.plots: every function draws small inputs, returns a Figure, checks shapes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from segcourse import plots  # noqa: E402
from segcourse.masks import PALETTE  # noqa: E402
from segcourse.train import History  # noqa: E402

CLASSES = ["background", "circle", "square", "triangle"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(n=2, size=12):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _masks(n=2, size=12):
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    masks[:, 2:6, 2:6] = 1  # "circle" in every mask
    masks[0, 8:, 8:] = 255  # some ignored pixels; no "square" (2) or "triangle" (3)
    return masks


def _legend_labels(fig):
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_show_images_batch_list_and_titles():
    fig = plots.show_images(_images(5), titles=list("abcde"), ncols=3)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")
    assert isinstance(plots.show_images(list(_images(2))), Figure)
    assert isinstance(plots.show_images(_images(1)[0]), Figure)  # one (3, H, W) image


def test_show_masks_legend_lists_only_present_classes():
    fig = plots.show_masks(_images(), _masks(), classes=CLASSES)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 3  # image | mask | overlay per row
    assert _legend_labels(fig) == ["background", "circle", "ignore"]
    ignore_patch = fig.legends[0].get_patches()[-1]
    assert ignore_patch.get_facecolor()[:3] == pytest.approx((1.0, 1.0, 1.0))


def test_show_masks_single_pair_and_unnamed_classes():
    fig = plots.show_masks(_images(1)[0], _masks()[1])  # no ignored pixels in this one
    assert _legend_labels(fig) == ["0", "1"]


def test_overlay_shape_and_colours():
    image, mask = _images(1)[0], _masks(1)[0]
    mask[0, 0] = 0
    result = plots.overlay(image, mask, alpha=1.0)
    assert result.shape == (12, 12, 3)
    np.testing.assert_allclose(result[3, 3], PALETTE[1])  # class 1 fully coloured
    np.testing.assert_allclose(result[0, 0], image[:, 0, 0].numpy())  # background untouched


def test_show_prediction_title_and_legend():
    target = _masks(1)[0]
    pred = target.clone()
    pred[target == 255] = 0  # ignored pixels are never errors
    pred[0, :] = 2  # 12 wrong pixels
    fig = plots.show_prediction(_images(1)[0], pred, target, classes=CLASSES)
    assert isinstance(fig, Figure)
    assert "pixel accuracy" in fig.get_suptitle() and "IoU" in fig.get_suptitle()
    assert fig.axes[3].get_title() == "errors (12 px)"
    assert _legend_labels(fig) == ["background", "circle", "square", "ignore"]


def _instance_target(scores=None):
    masks = torch.zeros(3, 12, 12, dtype=torch.uint8)
    masks[0, 1:4, 1:4] = masks[1, 6:10, 6:10] = masks[2, 0:2, 8:12] = 1
    target = {
        "boxes": torch.tensor([[1.0, 1, 4, 4], [6, 6, 10, 10], [8, 0, 12, 2]]),
        "labels": torch.tensor([1, 2, 3]),
        "masks": masks,
    }
    if scores is not None:
        target["scores"] = torch.tensor(scores)
    return target


def _texts(fig):
    return [text.get_text() for text in fig.axes[0].texts]


def test_show_instances_draws_a_box_and_label_per_instance():
    fig = plots.show_instances(_images(1)[0], _instance_target(), classes=CLASSES)
    assert isinstance(fig, Figure)
    assert sum(isinstance(p, Rectangle) for p in fig.axes[0].patches) == 3
    assert _texts(fig) == ["circle", "square", "triangle"]


def test_show_instances_filters_by_score_and_accepts_probability_masks():
    target = _instance_target(scores=[0.9, 0.2, 0.6])
    target["masks"] = target["masks"][:, None].float() * 0.8  # Mask R-CNN: (K, 1, H, W)
    fig = plots.show_instances(_images(1)[0], target, classes=CLASSES, score_threshold=0.5)
    assert _texts(fig) == ["circle 0.90", "triangle 0.60"]


def test_show_instances_into_given_axes():
    fig, ax = plt.subplots()
    assert plots.show_instances(_images(1)[0], _instance_target(), ax=ax) is fig


def test_plot_history_with_and_without_validation():
    history = History(step=[1, 2, 3], loss=[1.0, 0.7, 0.5], time=[0.1, 0.2, 0.3])
    assert len(plots.plot_history(history).axes) == 1
    history.val_step, history.val_pixel_accuracy, history.val_mean_iou = [3], [0.9], [0.6]
    fig = history.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert isinstance(plots.plot_history({"step": [1, 2], "loss": [1.0, 0.5]}), Figure)


@pytest.mark.parametrize(
    "call",
    [
        lambda: plots.show_images(torch.rand(2, 2, 3, 4, 4)),
        lambda: plots.show_images(torch.rand(2, 5, 4, 4)),
        lambda: plots.show_images(torch.rand(2, 3, 4, 4), titles=["only one"]),
        lambda: plots.show_masks(torch.rand(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long)),
        lambda: plots.show_masks(torch.rand(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long)),
        lambda: plots.overlay(torch.rand(3, 4, 4), torch.zeros(4, 5, dtype=torch.long)),
        lambda: plots.overlay(torch.rand(4, 4, 3), torch.zeros(4, 4, dtype=torch.long)),
        lambda: plots.show_prediction(
            torch.rand(3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(4, 4)
        ),
        lambda: plots.show_instances(torch.rand(3, 4, 4), {"boxes": torch.zeros(2, 4)}),
        lambda: plots.show_instances(
            torch.rand(3, 4, 4), {"boxes": torch.zeros(2, 5), "labels": torch.zeros(2)}
        ),
        lambda: plots.show_instances(
            torch.rand(3, 4, 4),
            {"boxes": torch.zeros(2, 4), "labels": torch.zeros(2), "masks": torch.zeros(2, 5, 4)},
        ),
        lambda: plots.plot_history(History()),
    ],
)
def test_bad_shapes_raise_value_error(call):
    with pytest.raises(ValueError, match="expected|got"):
        call()


# --- architectures ---------------------------------------------------------------------------


class _TwoPath(torch.nn.Module):
    """A hand-built encoder-decoder with one skip: every output shape is known in advance."""

    def __init__(self):
        super().__init__()
        self.down1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)  # (8, H/2, W/2)
        self.down2 = torch.nn.Sequential(  # (16, H/4, W/4)
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16)
        )
        self.up = torch.nn.ConvTranspose2d(16, 8, 2, stride=2)  # (8, H/2, W/2)
        self.head = torch.nn.Conv2d(8, 5, 1)  # (5, H/2, W/2)

    def forward(self, x):
        skip = self.down1(x)
        return self.head(self.up(self.down2(skip)) + skip)


def test_layer_shapes_match_a_hand_built_model():
    model = _TwoPath()
    shapes = plots.layer_shapes(model, torch.rand(2, 3, 32, 24), ["head", "down1", "up", "down2"])
    assert shapes == [  # the order in which the modules run, not the order asked
        ("down1", (2, 8, 16, 12)),
        ("down2", (2, 16, 8, 6)),
        ("up", (2, 8, 16, 12)),
        ("head", (2, 5, 16, 12)),
    ]
    inner = plots.layer_shapes(model, torch.rand(1, 3, 20, 20), ["down2.1"])
    assert inner == [("down2.1", (1, 16, 5, 5))]  # nested names as named_modules() spells them


def test_layer_shapes_removes_hooks_keeps_mode_and_statistics():
    model = _TwoPath().train()
    norm = model.down2[1]
    before = norm.running_mean.clone()
    plots.layer_shapes(model, torch.rand(2, 3, 16, 16), ["down1", "down2", "up", "head"])
    assert all(not m._forward_hooks for m in model.modules()), "hooks left behind"
    assert model.training, "the model's train mode must be restored"
    assert torch.equal(norm.running_mean, before), "batch-norm statistics must not change"


def test_layer_shapes_removes_hooks_when_the_forward_fails():
    model = _TwoPath()
    with pytest.raises(RuntimeError):
        plots.layer_shapes(model, torch.rand(1, 4, 16, 16), ["down1"])  # 4 channels, not 3
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_shapes_unknown_or_unused_module():
    model = _TwoPath()
    with pytest.raises(KeyError, match="no submodule named \\['down3'\\]"):
        plots.layer_shapes(model, torch.rand(1, 3, 8, 8), ["down1", "down3"])
    model.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="did not run"):
        plots.layer_shapes(model, torch.rand(1, 3, 8, 8), ["unused"])


def test_plot_architecture_blocks_labels_and_skips():
    model = _TwoPath()
    stages = [("down1", "enc1"), ("down2", "enc2"), "up", "head"]
    fig = plots.plot_architecture(
        model, torch.rand(1, 3, 32, 32), stages, skips=[("enc1", "up")], title="two paths"
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    blocks = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(blocks) == 1 + len(stages)  # the input, then one block per stage
    texts = [t.get_text() for t in ax.texts]
    assert texts == [
        "input\n3 x 32 x 32",
        "enc1\n8 x 16 x 16",
        "enc2\n16 x 8 x 8",
        "up\n8 x 16 x 16",
        "head\n5 x 16 x 16",
    ]
    heights = [b.get_height() for b in blocks]
    widths = [b.get_width() for b in blocks]
    assert heights[0] > heights[1] > heights[2] and heights[3] == heights[1]  # spatial size
    assert widths[2] > widths[1] > widths[4]  # 16 > 8 > 5 channels
    arrows = [p for p in ax.patches if not isinstance(p, Rectangle)]
    assert len(arrows) == len(stages) + 1  # data path arrows + one skip
    assert ax.get_title() == "two paths"
    assert fig.get_size_inches() == pytest.approx((8, 3)) and fig.dpi == 72


def test_plot_architecture_skip_to_an_unknown_stage():
    model = _TwoPath()
    with pytest.raises(ValueError, match="'decoder' is not one of the stages"):
        plots.plot_architecture(
            model, torch.rand(1, 3, 16, 16), ["down1", "up"], skips=[("down1", "decoder")]
        )
    assert all(not m._forward_hooks for m in model.modules())
