"""Draw data/scenes.png (example ScenesDataset items above their masks) and, with --stats N,
print the statistics data/README.md quotes, measured over N items.

Run from the repository root:
    .venv/bin/python data/scenes_figure.py              # the figure
    .venv/bin/python data/scenes_figure.py --stats 1000 # the statistics (about a minute)
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from segcourse.data import ScenesDataset  # noqa: E402
from segcourse.experiments import oracle_scores  # noqa: E402

COLOURS = ["#202020", "#e6194b", "#4363d8", "#3cb44b", "#f58231", "#ffe119", "#f032e6"]


def figure(columns: int = 8, path: Path | None = None) -> None:
    path = path or Path(__file__).with_name("scenes.png")
    dataset = ScenesDataset(columns, size=128, seed=0)
    cmap = ListedColormap(COLOURS)
    fig, axes = plt.subplots(2, columns, figsize=(1.5 * columns, 3.6), dpi=72)
    for i in range(columns):
        image, mask = dataset[i]
        axes[0, i].imshow(image.permute(1, 2, 0).numpy())
        axes[0, i].set_title(f"{i}: {dataset.scene_kind(i)}", fontsize=9)
        axes[1, i].imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=len(COLOURS) - 1,
                          interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    handles = [Patch(color=c, label=n) for c, n in zip(COLOURS, dataset.classes, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=len(COLOURS), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def statistics(count: int) -> None:
    semantic = ScenesDataset(count, seed=0)
    instance = ScenesDataset(count, seed=0, task="instance")
    start = time.perf_counter()
    masks = torch.stack([semantic[i][1] for i in range(count)])
    seconds = time.perf_counter() - start
    targets = [instance[i][1] for i in range(count)]
    print(f"{count} items of 128 px: {count / seconds:.0f} items/s (one process)")
    fraction = torch.bincount(masks.flatten(), minlength=7).double() / masks.numel()
    present = [(masks == c).flatten(1).any(1).double().mean() for c in range(7)]
    for c, name in enumerate(semantic.classes):
        print(f"  {name:10s} {fraction[c]:7.2%} of the pixels, in {present[c]:6.1%} of images")
    disk = [float(max(b[2] - b[0], b[3] - b[1]) + 1) / 2 for t in targets
            for label, b in zip(t["labels"], t["boxes"], strict=True) if label == 3]
    print("  disk radius (half the longer box side): min {:.1f}, 10/50/90 % {:.1f} / {:.1f} / "
          "{:.1f}, max {:.1f}".format(min(disk), *np.percentile(disk, [10, 50, 90]), max(disk)))

    def touching(t):
        disks = [m.numpy().astype(bool) for m, lab in zip(t["masks"], t["labels"], strict=True)
                 if lab == 3]
        return any((ndimage.binary_dilation(a, np.ones((3, 3))) & b).any()
                   for i, a in enumerate(disks) for b in disks[i + 1:])

    print(f"  images with two touching disks: {np.mean([touching(t) for t in targets]):.1%}")
    kinds = [semantic.scene_kind(i) for i in range(count)]
    print(f"  street scenes: {kinds.count('street') / count:.1%}")
    oracle = oracle_scores(ScenesDataset(min(count, 200), seed=1), [1, 2, 4, 8, 16, 32], 7)
    for stride, scores in oracle.items():
        print(f"  oracle at stride {stride:2d}: mIoU {scores['miou']:.3f}, "
              f"boundary mIoU {scores['boundary_miou']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stats", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.stats:
        statistics(args.stats)
    else:
        figure()
