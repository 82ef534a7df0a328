"""Train the course's shipped checkpoints: the single source of ``data/checkpoints/``.

    python scripts/train_checkpoints.py                 # every checkpoint
    python scripts/train_checkpoints.py unet_shapes     # one of them
    python scripts/train_checkpoints.py --steps 50 --out /tmp/ckpt unet_shapes   # a quick try

The architectures are the instructor notebooks' own classes: ``model_factory`` runs the
notebook's setup cell, its imports, and the definitions of the class and of the functions it
calls (nothing else: no training, no plots), so a checkpoint always fits the class that the
notebook defines and students see. Each model is trained with ``segcourse.train.fit`` on
offline data (``DATA``: the ``*_shapes`` checkpoints on ``ShapesDataset`` at 64 px, the
``*_scenes`` ones on ``ScenesDataset`` at 128 px, 7 classes), with the same optimiser as the
notebooks and a step decay of the learning rate for the last fifth of the steps, and scored
with ``segcourse.metrics.evaluate`` (mean IoU, pixel accuracy; boundary mIoU for the scenes)
on a held-out set of the same dataset. Instance models (``task=
"instance"``: notebook 08's Mask R-CNN) train on ``ShapesDataset(task="instance")`` and are scored
with the notebook's own COCO evaluation (``coco_scores``: box and mask AP, AP50, AP75). The weights (a state dict)
go to ``data/checkpoints/<name>.pt`` and the manifest records the file's sha256, the device, the
torch version, the steps, the training time, the scores and the command.

The course design asks for GPU-trained checkpoints; the script runs on whatever device
``segcourse.runtime.get_device()`` picks (or ``--device``), and the manifest says which. The
shipped ones were trained on a CPU (one thread: ``OMP_NUM_THREADS=1``, as the machine was
shared), about 12 and 6 minutes for the ``*_shapes`` U-Net and DeepLabv3+, 25 and 23 minutes
for the ``*_scenes`` ones (load average 7 to 15 on 2 cores); the manifest records each one's
time.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from segcourse.checkpoints import MANIFEST, checkpoints_dir
from segcourse.data import ScenesDataset, ShapesDataset, collate_instances
from segcourse.metrics import evaluate
from segcourse.runtime import device_name, get_device, seed_everything
from segcourse.train import fit

REPO = Path(__file__).resolve().parent.parent

# name -> how to build and train it. "model": the class's keyword arguments (kept in the
# manifest, so a notebook builds the model with `Class(**checkpoint_info(name)["model"])`).
CHECKPOINTS = {
    "unet_shapes": dict(
        notebook="05_unet", cls="UNet",
        model=dict(in_channels=3, num_classes=6, width=16, depth=3, padding=1, batch_norm=True),
        steps=2500, batch_size=16, lr=3e-3,
    ),
    "deeplabv3plus_shapes": dict(
        notebook="06_deeplab", cls="DeepLabV3Plus",
        model=dict(num_classes=6, width=16, atrous_rates=(2, 4, 6), aspp_channels=48,
                   low_level_channels=16),
        steps=2500, batch_size=16, lr=3e-3,
    ),
    "segformer_shapes": dict(
        notebook="09_transformers", cls="SegFormer",
        model=dict(num_classes=6, dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2),
                   sr_ratios=(4, 2, 1, 1), mlp_ratio=4, decoder_dim=64),
        steps=2500, batch_size=16, lr=1e-3,
    ),
    # Instance segmentation: torchvision's Mask R-CNN with the notebook's small backbone, trained
    # on ShapesDataset(task="instance") and scored with the notebook's COCO evaluation.
    "mask_rcnn_shapes": dict(
        notebook="08_mask_rcnn", cls="SmallMaskRCNN", task="instance",
        model=dict(num_classes=6, width=16, image_size=64, anchor_sizes=(12, 24, 48),
                   representation=128, mask_channels=32),
        steps=2000, batch_size=8, lr=1e-3,
    ),
    # The same architectures on the issue-16 scenes (7 classes, 128 px). Steps are sized so
    # that each trains in about 15 to 20 minutes on one shared CPU thread.
    "unet_scenes": dict(
        notebook="05_unet", cls="UNet", data="scenes",
        model=dict(in_channels=3, num_classes=7, width=16, depth=3, padding=1, batch_norm=True),
        steps=700, batch_size=8, lr=3e-3,
    ),
    "deeplabv3plus_scenes": dict(
        notebook="06_deeplab", cls="DeepLabV3Plus", data="scenes",
        model=dict(num_classes=7, width=16, atrous_rates=(2, 4, 6), aspp_channels=48,
                   low_level_channels=16),
        steps=2500, batch_size=8, lr=3e-3,
    ),
}
TRAIN = dict(length=4096, size=64, seed=0)  # the notebooks train on the first 1024 of these
EVAL = dict(length=128, size=64, seed=1)  # the notebooks' held-out set
INSTANCE_EVAL = dict(length=256, size=64, seed=1)  # notebook 08's held-out set
# A checkpoint's "data" (default "shapes"): its dataset class, training and held-out sets.
DATA = {
    "shapes": dict(cls=ShapesDataset, train=TRAIN, eval=EVAL),
    "scenes": dict(cls=ScenesDataset, train=dict(length=4096, size=128, seed=0),
                   eval=dict(length=128, size=128, seed=1)),
}


def _data(name: str) -> dict:
    """The ``DATA`` entry of checkpoint ``name``."""
    return DATA[CHECKPOINTS[name].get("data", "shapes")]


def _describe(dataset_class, length: int, size: int, seed: int) -> str:
    """How the manifest names a dataset, e.g. ``ScenesDataset(128, size=128, seed=1)``."""
    return f"{dataset_class.__name__}({length}, size={size}, seed={seed})"


# --------------------------------------------------------------------------------------------
# The notebook as the source of the architecture


def _code_cells(notebook: str) -> list[str]:
    path = REPO / "notebooks" / notebook / f"{notebook}.ipynb"
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c["cell_type"] == "code"]
    # IPython magics and shell lines are not Python
    return ["\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
            for src in sources]


def _definitions(notebook: str) -> tuple[str, list[tuple[set[str], ast.stmt]]]:
    """The setup cell, and every top-level import, function and class of the other cells."""
    setup, *cells = _code_cells(notebook)
    nodes = []
    for source in cells:
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                nodes.append(({node.name}, node))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                nodes.append((set(), node))
    return setup, nodes


def _called(node: ast.stmt) -> set[str]:
    """Names that a definition calls or subclasses (not names that its docstring mentions)."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
            names.add(sub.func.id)
        if isinstance(sub, ast.ClassDef):
            names |= {base.id for base in sub.bases if isinstance(base, ast.Name)}
    return names


def notebook_namespace(notebook: str, names: set[str]) -> dict:
    """Run a notebook's setup cell, its imports, and the definitions of ``names`` and of what
    they call, transitively; nothing else of the notebook runs (no training, no plots)."""
    import matplotlib

    matplotlib.use("Agg")
    setup, nodes = _definitions(notebook)
    defined = {name: node for names_, node in nodes for name in names_}
    needed, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in needed or name not in defined:
            continue
        needed.add(name)
        todo += sorted(_called(defined[name]))
    body = [node for names_, node in nodes if not names_ or names_ & needed]
    namespace: dict = {"__name__": f"notebook_{notebook}"}
    exec(compile(setup, f"{notebook}:setup", "exec"), namespace)
    exec(compile(ast.Module(body=body, type_ignores=[]), f"{notebook}:definitions", "exec"), namespace)
    return namespace


def model_factory(name: str) -> torch.nn.Module:
    """A fresh (untrained) model of checkpoint ``name``, built by its notebook's class."""
    spec = CHECKPOINTS[name]
    return notebook_namespace(spec["notebook"], {spec["cls"]})[spec["cls"]](**spec["model"])


# --------------------------------------------------------------------------------------------
# Training and the manifest


def _tensors(length: int, size: int, seed: int, dataset_class=ShapesDataset):
    dataset = dataset_class(length, size=size, seed=seed)
    images, masks = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(masks)


def eval_loader(length: int | None = None, name: str | None = None) -> DataLoader:
    """The held-out set the manifest's scores of checkpoint ``name`` are measured on (default:
    the ``*_shapes`` checkpoints' set), or its first ``length`` items."""
    data = _data(name) if name is not None else DATA["shapes"]
    images, masks = _tensors(**data["eval"], dataset_class=data["cls"])
    if length is not None:
        images, masks = images[:length], masks[:length]
    return DataLoader(TensorDataset(images, masks), batch_size=64)


def _instance_step(model, batch, device):
    images, targets = batch
    images = [image.to(device) for image in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return sum(model(images, targets).values())


def train_instance(name: str, out: Path, steps: int | None, device) -> dict:
    """Train and score an instance model (Mask R-CNN): COCO box and mask AP on the eval set."""
    spec = CHECKPOINTS[name]
    steps = steps or spec["steps"]
    seed_everything(0)
    namespace = notebook_namespace(spec["notebook"], {spec["cls"], "coco_scores", "predict_instances"})
    model = namespace[spec["cls"]](**spec["model"])
    train_set = ShapesDataset(**TRAIN, task="instance")
    items = [train_set[i] for i in range(len(train_set))]
    loader = DataLoader(items, batch_size=spec["batch_size"], shuffle=True,
                        collate_fn=collate_instances, generator=torch.Generator().manual_seed(0))
    decay_at = int(0.8 * steps)
    start = time.perf_counter()
    first = fit(model, loader, lr=spec["lr"], max_steps=decay_at, device=device, seed=0,
                step_fn=_instance_step)
    second = fit(model, loader, lr=spec["lr"] / 10, max_steps=steps - decay_at, device=device,
                 step_fn=_instance_step)
    seconds = time.perf_counter() - start
    eval_set = ShapesDataset(**INSTANCE_EVAL, task="instance")
    images, targets = zip(*(eval_set[i] for i in range(len(eval_set))), strict=True)
    predictions = namespace["predict_instances"](model, list(images))
    scores = namespace["coco_scores"](list(targets), predictions, spec["model"]["num_classes"])

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    data = "ShapesDataset({length}, size={size}, seed={seed}, task='instance')"
    return _entry(name, path, model, device, first, second, decay_at, seconds,
                  train_data=data.format(**TRAIN), eval_data=data.format(**INSTANCE_EVAL),
                  scores={key: round(value, 5) for key, value in scores.items()})


def _entry(name: str, path: Path, model, device, first, second, decay_at: int, seconds: float,
           train_data: str, eval_data: str, scores: dict) -> dict:
    """The manifest entry of a checkpoint just written to ``path``."""
    spec = CHECKPOINTS[name]
    return {
        "name": name,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "notebook": spec["notebook"],
        "class": spec["cls"],
        "model": spec["model"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "steps": len(first.step) + len(second.step),
        "batch_size": spec["batch_size"],
        "lr": spec["lr"],
        "lr_schedule": f"x0.1 after step {decay_at}",
        "train_data": train_data,
        "eval_data": eval_data,
        "train_seconds": round(seconds, 1),
        "final_loss": round(second.smoothed_loss()[-1], 5),
        **scores,
        "command": "python " + " ".join(shlex.quote(a) for a in ["scripts/train_checkpoints.py", *sys.argv[1:]]),
    }


def train_one(name: str, out: Path, steps: int | None, device) -> dict:
    spec = CHECKPOINTS[name]
    if spec.get("task") == "instance":
        return train_instance(name, out, steps, device)
    steps = steps or spec["steps"]
    seed_everything(0)
    model = model_factory(name)
    data = _data(name)
    images, masks = _tensors(**data["train"], dataset_class=data["cls"])
    loader = DataLoader(TensorDataset(images, masks), batch_size=spec["batch_size"], shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    decay_at = int(0.8 * steps)
    start = time.perf_counter()
    first = fit(model, loader, lr=spec["lr"], max_steps=decay_at, device=device, seed=0)
    second = fit(model, loader, lr=spec["lr"] / 10, max_steps=steps - decay_at, device=device)
    seconds = time.perf_counter() - start
    scores = evaluate(model, eval_loader(name=name), num_classes=spec["model"]["num_classes"],
                      progress=False)
    recorded = ["mean_iou", "pixel_accuracy"] + (["boundary_miou"] if spec.get("data") else [])

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.pt"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, path)
    return _entry(name, path, model, device, first, second, decay_at, seconds,
                  train_data=_describe(data["cls"], **data["train"]),
                  eval_data=_describe(data["cls"], **data["eval"]),
                  scores={key: round(scores[key], 5) for key in recorded})


def write_manifest(out: Path, entries: list[dict]) -> None:
    """Add or replace ``entries`` in ``out``'s manifest (locked: two trainings may finish at
    once)."""
    path = out / MANIFEST
    with open(out / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = json.loads(path.read_text()) if path.exists() else {"checkpoints": []}
        names = {e["name"] for e in entries}
        kept = [e for e in manifest["checkpoints"] if e["name"] not in names]
        manifest["checkpoints"] = sorted(kept + entries, key=lambda e: e["name"])
        manifest["made_by"] = "scripts/train_checkpoints.py"
        path.write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {sorted(CHECKPOINTS)}")
    parser.add_argument("--steps", type=int, default=None, help="override the steps (quick tries)")
    parser.add_argument("--out", type=Path, default=checkpoints_dir())
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(CHECKPOINTS))
    if unknown:
        parser.error(f"unknown checkpoint(s) {unknown}; known: {sorted(CHECKPOINTS)}")
    device = get_device(args.device)
    for name in args.names or sorted(CHECKPOINTS):
        print(f"== {name} on {device_name(device)}", flush=True)
        entry = train_one(name, args.out, args.steps, device)
        write_manifest(args.out, [entry])
        print(json.dumps(entry, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
