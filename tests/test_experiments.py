"""segcourse.experiments: equal time budgets, the rows and summaries promised, oracle ceilings."""

import doctest
import math
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

import segcourse.experiments
from segcourse.data import ScenesDataset
from segcourse.experiments import Results, compare, oracle_scores

matplotlib.use("Agg")


def tiny(seed):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 7, 1))


def test_compare_runs_every_model_and_seed_for_the_same_time():
    budget = 0.4
    train, val = ScenesDataset(16, size=32), ScenesDataset(6, size=32, seed=1)
    seen_seeds = []

    def linear(seed):
        seen_seeds.append(seed)
        return nn.Conv2d(3, 7, 1)

    def pair_iou(pred, target):  # an extra score: IoU of the context pair as one class
        p, t = (pred == 1) | (pred == 2), (target == 1) | (target == 2)
        return float((p & t).sum() / (p | t).sum().clamp(min=1))

    results = compare({"linear": linear, "tiny": tiny}, train, val, num_classes=7,
                      time_budget=budget, seeds=(0, 5), metrics={"pair_iou": pair_iou},
                      batch_size=4, progress=False)
    assert seen_seeds == [0, 5], "each builder is called once per seed, with the seed"
    assert [(row["name"], row["seed"]) for row in results.rows] == [
        ("linear", 0), ("linear", 5), ("tiny", 0), ("tiny", 5)]
    for row in results.rows:
        assert set(row) == {"name", "seed", "steps", "seconds", "miou", "boundary_miou",
                            "pixel_accuracy", "pair_iou"}
        assert row["steps"] >= 1
        # Equal time budgets: every run trains at least the budget, at most one step more.
        assert budget <= row["seconds"] < budget + 2 * row["seconds"] / row["steps"] + 0.5
        for key in ("miou", "boundary_miou", "pixel_accuracy", "pair_iou"):
            assert 0.0 <= row[key] <= 1.0
    assert results.time_budget == budget
    assert results.metrics == ["miou", "boundary_miou", "pixel_accuracy", "pair_iou"]


ROWS = [
    {"name": "a", "seed": 0, "steps": 10, "seconds": 1.0, "miou": 0.5, "boundary_miou": 0.2,
     "pixel_accuracy": 0.9},
    {"name": "a", "seed": 1, "steps": 20, "seconds": 1.1, "miou": 0.7, "boundary_miou": 0.4,
     "pixel_accuracy": 0.9},
    {"name": "b", "seed": 0, "steps": 5, "seconds": 1.2, "miou": 0.6, "boundary_miou": math.nan,
     "pixel_accuracy": 0.8},
]


def test_summary_table_and_plot():
    results = Results(ROWS, time_budget=1.0)
    summary = results.summary()
    assert list(summary) == ["a", "b"]
    mean, std = summary["a"]["miou"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(math.sqrt(0.02))  # ddof=1
    assert summary["a"]["steps"] == 15 and summary["a"]["runs"] == 2
    assert summary["b"]["miou"] == (0.6, 0.0), "one seed: std 0"
    assert all(math.isnan(v) for v in summary["b"]["boundary_miou"]), "NaN scores left out"
    table = results.table()
    assert "0.600 ± 0.141" in table and "boundary_miou" in table and "1 s" in table
    assert table.splitlines()[1].split()[:3] == ["a", "2", "15"]
    ax = results.plot("boundary_miou")
    assert len(ax.patches) == 2 and [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="unknown metric"):
        results.plot("dice")


def test_oracle_scores_on_scenes_fall_with_the_stride():
    scores = oracle_scores(ScenesDataset(24, seed=3), [1, 2, 4, 8, 16, 32], num_classes=7)
    assert scores[1] == {"miou": 1.0, "boundary_miou": 1.0}
    for key in ("miou", "boundary_miou"):
        values = [scores[s][key] for s in (1, 2, 4, 8, 16, 32)]
        assert all(a > b for a, b in zip(values, values[1:])), (key, values)
    assert scores[32]["miou"] < 0.5, "at stride 32 (a 4 x 4 map) most small things are lost"


def test_oracle_scores_small_case():
    # One 8 x 8 image: class 1 fills the 2 x 2 top-left corner. At stride 4 the corner cell
    # holds 4/16 of class 1: argmax says background everywhere -> IoU_1 = 0, IoU_0 = 60/64.
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[:2, :2] = 1
    data = [(torch.zeros(3, 8, 8), mask)]
    scores = oracle_scores(data, [1, 4], num_classes=2)
    assert scores[1]["miou"] == 1.0
    assert scores[4]["miou"] == pytest.approx((60 / 64 + 0) / 2)
    mask[:4, :4] = 1  # a whole cell: bilinear upsampling keeps most of it
    assert oracle_scores(data, [4], num_classes=2)[4]["miou"] > 0.6


def test_compare_rejects_bad_arguments():
    data = ScenesDataset(2, size=32)
    with pytest.raises(ValueError, match="builders is empty"):
        compare({}, data, data, num_classes=7, time_budget=1)
    with pytest.raises(ValueError, match="time_budget"):
        compare({"t": tiny}, data, data, num_classes=7, time_budget=0)


def test_docstring_examples():
    result = doctest.testmod(segcourse.experiments)
    assert result.attempted > 0 and result.failed == 0


def test_a_recorded_comparison_is_saved_scaled_and_read_back(tmp_path, monkeypatch):
    """With SEGCOURSE_RECORD_EXPERIMENTS set, the budget is scaled, counted in CPU seconds,
    and the rows come back from ``recorded`` as they were."""
    monkeypatch.setenv(segcourse.experiments.RECORD_ENV, str(tmp_path))
    monkeypatch.setenv(segcourse.experiments.SCALE_ENV, "3")
    train, val = ScenesDataset(8, size=32), ScenesDataset(4, size=32, seed=1)
    results = compare({"tiny": tiny}, train, val, num_classes=7, time_budget=0.1, seeds=(0,),
                      progress=False, record="tiny_case")
    assert results.time_budget == pytest.approx(0.3)
    assert results.rows[0]["seconds"] >= 0.3  # CPU seconds: the run went on to the scaled budget
    shipped, info = segcourse.experiments.recorded("tiny_case", root=tmp_path)
    assert shipped.rows == results.rows and info["clock"] == "cpu"
    assert info["time_budget"] == pytest.approx(0.3)
    assert segcourse.experiments.recorded("absent", root=tmp_path) is None


def test_without_the_variable_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv(segcourse.experiments.RECORD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    results = compare({"tiny": tiny}, ScenesDataset(8, size=32), ScenesDataset(4, size=32, seed=1),
                      num_classes=7, time_budget=0.1, seeds=(0,), progress=False, record="x")
    assert results.time_budget == 0.1 and not list(tmp_path.iterdir())


def test_only_the_named_comparisons_are_recorded(tmp_path, monkeypatch):
    """SEGCOURSE_RECORD_ONLY (record_experiments.py --only): a comparison not named runs with
    the notebook's budget and writes nothing; a named one is scaled and written."""
    monkeypatch.setenv(segcourse.experiments.RECORD_ENV, str(tmp_path))
    monkeypatch.setenv(segcourse.experiments.SCALE_ENV, "3")
    monkeypatch.setenv(segcourse.experiments.ONLY_ENV, "wanted, also")
    train, val = ScenesDataset(8, size=32), ScenesDataset(4, size=32, seed=1)
    other = compare({"tiny": tiny}, train, val, num_classes=7, time_budget=0.1, seeds=(0,),
                    progress=False, record="other")
    assert other.time_budget == 0.1 and not list(tmp_path.iterdir())
    assert segcourse.experiments.save_record(other, "other") is None
    wanted = compare({"tiny": tiny}, train, val, num_classes=7, time_budget=0.1, seeds=(0,),
                     progress=False, record="wanted")
    assert wanted.time_budget == pytest.approx(0.3)
    assert [p.name for p in tmp_path.iterdir()] == ["wanted.json"]
    assert segcourse.experiments.recording("also") and not segcourse.experiments.recording("other")
    monkeypatch.delenv(segcourse.experiments.ONLY_ENV)
    assert segcourse.experiments.recording("other")  # no list: every comparison is recorded
    monkeypatch.delenv(segcourse.experiments.RECORD_ENV)
    assert not segcourse.experiments.recording("wanted")


def test_record_script_stops_after_the_last_cell_that_records(tmp_path):
    """scripts/record_experiments.py runs a notebook up to its last recording cell, or, with
    --only, up to the last cell that names one of the comparisons."""
    import importlib.util

    import nbformat

    path = Path(__file__).resolve().parent.parent / "scripts" / "record_experiments.py"
    spec = importlib.util.spec_from_file_location("record_experiments", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cells = ["x = 1", 'compare(b, t, v, record="a")', 'if recording("b"):\n    compare(record="b")',
             "y = 2", 'save_record(r, "c")', "z = 3"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    assert len(script.up_to_last_record(nbformat.from_dict(notebook)).cells) == 5
    assert len(script.up_to_last_record(nbformat.from_dict(notebook), ["b"]).cells) == 3
    assert len(script.up_to_last_record(nbformat.from_dict(notebook), ["a"]).cells) == 2
    with pytest.raises(SystemExit, match="no cell records d"):
        script.up_to_last_record(nbformat.from_dict(notebook), ["d"])
