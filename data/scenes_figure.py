"""Draw data/scenes.png: example ScenesDataset items (image above, mask below) and a legend.

Run from the repository root:  .venv/bin/python data/scenes_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from segcourse.data import ScenesDataset  # noqa: E402

COLOURS = ["#202020", "#e6194b", "#4363d8", "#3cb44b", "#f58231", "#ffe119", "#f032e6"]


def main(columns: int = 8, path: Path | None = None) -> None:
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


if __name__ == "__main__":
    main()
