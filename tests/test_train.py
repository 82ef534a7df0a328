"""segcourse.train: budgets, history, determinism, custom steps and predict."""

import time

import pytest
import torch

from segcourse.train import History, fit, predict


def _toy_data(n=64, size=8, seed=0):
    """Two classes that a 1x1 conv can separate: class 1 where the red channel is bright."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 2, (n, size, size), generator=gen)
    images = 0.5 * torch.rand(n, 3, size, size, generator=gen)
    images[:, 0] += 0.5 * masks  # red channel in [0.5, 1] for class 1, [0, 0.5] for class 0
    masks[:, 0, 0] = 255  # an ignored pixel in every mask
    return images, masks


def _loader(batch_size=8, n=64, shuffle=False):
    images, masks = _toy_data(n)
    dataset = torch.utils.data.TensorDataset(images, masks)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, 2, kernel_size=1)


def test_loss_goes_down_on_a_tiny_problem():
    history = fit(_model(), _loader(), lr=0.1, max_steps=60, device="cpu", progress=False)
    smoothed = history.smoothed_loss()
    assert smoothed[-1] < 0.5 * smoothed[0], (
        f"loss went from {smoothed[0]:.3f} to {smoothed[-1]:.3f}"
    )


def test_max_steps_is_exact_and_history_is_consistent():
    model = _model()
    history = fit(model, _loader(), max_steps=13, device="cpu", progress=False)  # 8 per epoch
    assert history.stopped_by == "steps"
    assert history.step == list(range(1, 14))
    assert len(history.loss) == len(history.time) == 13
    assert history.epochs == 1
    assert history.time == sorted(history.time)
    assert not model.training, "fit should leave the model in eval mode"


def test_epochs_are_honoured():
    history = fit(_model(), _loader(), epochs=3, device="cpu", progress=False)
    assert history.stopped_by == "epochs" and history.epochs == 3
    assert len(history.step) == 3 * 8


def test_time_budget_stops_the_run():
    class Slow(torch.nn.Conv2d):
        def forward(self, x):
            time.sleep(0.02)
            return super().forward(x)

    start = time.perf_counter()
    history = fit(
        Slow(3, 2, 1), _loader(batch_size=1), time_budget=0.2, device="cpu", progress=False
    )
    assert history.stopped_by == "time"
    assert 0.2 <= history.time[-1] < 1.0
    assert history.time[-2] < 0.2, "it should stop at the first step past the budget"
    assert time.perf_counter() - start < 2.0


def test_the_first_budget_reached_wins():
    history = fit(
        _model(), _loader(), max_steps=5, epochs=10, time_budget=60, device="cpu", progress=False
    )
    assert history.stopped_by == "steps" and len(history.step) == 5


def test_a_budget_is_required():
    with pytest.raises(ValueError, match="budget"):
        fit(_model(), _loader(), device="cpu", progress=False)


def test_validation_needs_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        fit(_model(), _loader(), epochs=1, val_loader=_loader(), device="cpu", progress=False)


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        fit(_model(), [], epochs=1, device="cpu", progress=False)


def test_same_seed_same_losses():
    runs = [
        fit(_model(), _loader(shuffle=True), max_steps=12, seed=3, device="cpu", progress=False)
        for _ in range(2)
    ]
    assert runs[0].loss == runs[1].loss


def test_validation_after_every_epoch_and_at_the_end():
    history = fit(
        _model(),
        _loader(),
        lr=0.1,
        epochs=2,
        val_loader=_loader(n=16),
        num_classes=2,
        device="cpu",
        progress=False,
    )
    assert history.val_step == [8, 16]
    assert len(history.val_mean_iou) == len(history.val_pixel_accuracy) == 2
    assert history.val_pixel_accuracy[-1] > 0.9

    history = fit(
        _model(),
        _loader(),
        max_steps=5,
        val_loader=_loader(n=16),
        num_classes=2,
        val_every=2,
        device="cpu",
        progress=False,
    )
    assert history.val_step == [2, 4, 5]


def test_custom_step_fn_with_dict_batches():
    images, masks = _toy_data()
    batches = [{"x": images[i : i + 8], "y": masks[i : i + 8]} for i in range(0, 64, 8)]

    def step_fn(model, batch, device):
        logits = model(batch["x"].to(device))
        return torch.nn.functional.cross_entropy(logits, batch["y"].to(device), ignore_index=255)

    history = fit(
        _model(), batches, step_fn=step_fn, lr=0.1, epochs=2, device="cpu", progress=False
    )
    assert len(history.loss) == 16 and history.loss[-1] < history.loss[0]


def test_progress_bar_runs():
    history = fit(_model(), _loader(), max_steps=3, log_every=1, device="cpu", progress=True)
    assert len(history.step) == 3


def test_predict_shapes_and_mode():
    model = _model().train()
    images, _ = _toy_data(n=4)
    pred = predict(model, images)
    assert pred.dtype == torch.int64 and pred.shape == (4, 8, 8)
    assert torch.equal(predict(model, images[0]), pred[0])
    assert model.training, "predict should restore the model's mode"
    with pytest.raises(ValueError, match="expected images"):
        predict(model, images[0, 0])


def test_history_repr_and_smoothing():
    history = History(step=[1, 2, 3], loss=[1.0, 1.0, 1.0], time=[0.1, 0.2, 0.3])
    assert history.smoothed_loss() == pytest.approx([1.0, 1.0, 1.0])
    assert "steps=3" in repr(history)
    assert repr(History()) == "History(no steps)"


def test_fit_counts_its_budget_on_the_clock_it_is_given():
    """A clock that advances one 'second' per reading: the budget of 3 ends after a fixed
    number of steps, whatever the machine's speed."""
    from itertools import count

    ticks = count()
    images, masks = torch.rand(4, 3, 8, 8), torch.randint(0, 2, (4, 8, 8))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, masks), batch_size=2)
    history = fit(torch.nn.Conv2d(3, 2, 1), loader, time_budget=3, progress=False,
                  clock=lambda: float(next(ticks)))
    assert history.stopped_by == "time" and len(history.step) == 3
