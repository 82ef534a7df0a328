"""The shipped checkpoints: intact, loadable into their notebook's class, as good as recorded."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from segcourse.checkpoints import (
    CheckpointMissing,
    checkpoint_info,
    checkpoint_path,
    checkpoints_dir,
    load_checkpoint,
    load_manifest,
)
from segcourse.metrics import evaluate

REPO = Path(__file__).resolve().parent.parent
MAX_BYTES = 5 * 2**20  # "a few MB each at most"


def _script():
    spec = importlib.util.spec_from_file_location(
        "train_checkpoints", REPO / "scripts" / "train_checkpoints.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


script = _script()
NAMES = sorted(script.CHECKPOINTS)
# Semantic models are scored by mean IoU here; instance models (Mask R-CNN) by COCO mask AP in
# their notebook's test file (tests/test_nb08_mask_rcnn.py).
SEMANTIC = [name for name in NAMES if script.CHECKPOINTS[name].get("task") != "instance"]


def test_manifest_lists_every_checkpoint_the_script_makes():
    manifest = load_manifest()
    assert sorted(e["name"] for e in manifest["checkpoints"]) == NAMES
    for entry in manifest["checkpoints"]:
        score = "mean_iou" if entry["name"] in SEMANTIC else "mask_AP50"
        for key in ("file", "sha256", "device", "torch", "steps", "train_seconds", score,
                    "command", "model", "class", "notebook"):
            assert key in entry, f"{entry['name']}: manifest entry lacks {key!r}"
        assert entry["command"].startswith("python scripts/train_checkpoints.py")
        assert entry["model"] == json.loads(json.dumps(script.CHECKPOINTS[entry["name"]]["model"]))


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_file_is_intact_and_small(name):
    path = checkpoint_path(name)  # raises if the sha256 differs from the manifest
    assert path.stat().st_size == checkpoint_info(name)["bytes"] <= MAX_BYTES


@pytest.mark.parametrize("name", SEMANTIC)
def test_checkpoint_loads_and_scores_as_recorded(name):
    info = checkpoint_info(name)
    model = script.model_factory(name)  # the notebook's class, built from the notebook
    load_checkpoint(name, model, device="cpu")
    assert not model.training
    scores = evaluate(model, script.eval_loader(name=name), num_classes=info["model"]["num_classes"],
                      device="cpu", progress=False)
    assert abs(scores["mean_iou"] - info["mean_iou"]) < 0.005, (scores["mean_iou"], info)


@pytest.mark.parametrize("name", SEMANTIC)
def test_manifest_names_the_data_it_was_trained_and_scored_on(name):
    # The manifest's data strings are true: evaluated, they build the held-out set the test
    # above scores on, and the training set of the script's DATA table.
    from segcourse.data import ScenesDataset, ShapesDataset

    info = checkpoint_info(name)
    classes = {"ScenesDataset": ScenesDataset, "ShapesDataset": ShapesDataset}
    data = script.DATA[script.CHECKPOINTS[name].get("data", "shapes")]
    train_set = eval(info["train_data"], classes)  # noqa: S307 (our own manifest)
    eval_set = eval(info["eval_data"], classes)  # noqa: S307
    assert type(train_set) is type(eval_set) is data["cls"]
    assert (len(train_set), train_set.size[0], train_set.seed) == tuple(data["train"].values())
    images, masks = next(iter(script.eval_loader(length=2, name=name)))
    assert torch.equal(images[1], eval_set[1][0]) and torch.equal(masks[1], eval_set[1][1])
    assert eval_set.num_classes == info["model"]["num_classes"]
    if name.endswith("_scenes"):
        assert 0.0 <= info["boundary_miou"] <= info["mean_iou"] <= 1.0


def test_unknown_checkpoint_says_which_exist():
    with pytest.raises(CheckpointMissing, match="known"):
        checkpoint_info("no_such_checkpoint")


def test_corrupted_or_missing_file_is_reported(tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoints_dir(), root)
    name = NAMES[0]
    path = root / checkpoint_info(name, root)["file"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointMissing, match="sha256"):
        load_checkpoint(name, torch.nn.Linear(1, 1), root=root)
    path.unlink()
    with pytest.raises(CheckpointMissing, match="missing"):
        checkpoint_path(name, root)
    with pytest.raises(CheckpointMissing, match="manifest"):
        load_manifest(tmp_path / "nowhere")


def test_wrong_architecture_is_reported():
    with pytest.raises(RuntimeError, match="does not fit"):
        load_checkpoint(NAMES[0], torch.nn.Linear(1, 1))
