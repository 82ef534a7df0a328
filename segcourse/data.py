"""Offline data: generated scenes with masks, and the photos scikit-image and scikit-learn ship.

Nothing here downloads anything (COURSE.md section 5). The scene datasets share one constructor,
``(length, size=64, seed=0, task="semantic")``, and one item format (COURSE.md section 3):

- ``task="semantic"``: ``(image, mask)``; image float32 ``(3, H, W)`` in [0, 1], mask int64
  ``(H, W)`` of class ids, 0 = background.
- ``task="instance"``: ``(image, target)`` with torchvision's detection target, a dict of
  ``boxes`` float32 ``(K, 4)``, ``labels`` int64 ``(K,)`` (class ids >= 1) and ``masks`` uint8
  ``(K, H, W)``. Boxes are ``(x1, y1, x2, y2)`` as ``torchvision.ops.masks_to_boxes`` makes them:
  the first and the last pixel column/row that the mask covers (inclusive, so ``x2 - x1`` is the
  width minus one). Every instance spans at least 2 rows and 2 columns (x2 > x1, y2 > y1).

The datasets:

- ``ShapesDataset``: circles, squares, triangles, stars and crosses ("things") over textures cut
  from scikit-image's brick, grass and gravel photos ("stuff").
- ``DigitsDataset``: scikit-learn's real handwritten 8 x 8 digits, upscaled, over the textures.
- ``CellsDataset``: packed cell-like blobs, many touching, for the U-Net border-weight lesson.
- ``RareShapesDataset``: large shapes, small clutter and a rare class of small crosses (about
  1.5 % of the pixels, told apart by shape, not colour), for the class-imbalance lesson.

Item ``i`` depends only on ``(seed, i)``: it is drawn with ``np.random.default_rng([seed, i])``,
so it is the same in any order of access, in any DataLoader worker and on any machine. The
instance target of an item is computed from the same drawing as its semantic mask: same image,
and the masks painted with their labels give back the semantic mask pixel for pixel.

>>> dataset = ShapesDataset(100, size=64, seed=0)
>>> image, mask = dataset[0]
>>> image.shape, image.dtype, mask.shape, mask.dtype
(torch.Size([3, 64, 64]), torch.float32, torch.Size([64, 64]), torch.int64)
>>> dataset.classes
['background', 'circle', 'square', 'triangle', 'star', 'cross']
"""

from __future__ import annotations

import colorsys
import functools
import operator

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

__all__ = [
    "ShapesDataset",
    "DigitsDataset",
    "CellsDataset",
    "RareShapesDataset",
    "ScenesDataset",
    "DATASETS",
    "make_dataset",
    "collate_instances",
    "PHOTO_NAMES",
    "load_photo",
    "load_photos",
]

TASKS = ("semantic", "instance")
MIN_SIZE = 16


# --------------------------------------------------------------------------------------------
# Source images: loaded lazily (not at import) and once per process.


@functools.cache
def _textures() -> tuple[np.ndarray, ...]:
    """scikit-image's grayscale texture photos (brick, grass, gravel), each float32 (512, 512)."""
    from skimage import data as skdata

    return tuple(
        getattr(skdata, name)().astype(np.float32) / 255.0 for name in ("brick", "grass", "gravel")
    )


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: images float32 (N, 8, 8) in [0, 1], targets (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each float32 (H, W); read-only (shared by items)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


# --------------------------------------------------------------------------------------------
# Drawing helpers: numpy on coordinate grids, no loops over pixels.


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour, float32 (3,) RGB in [0, 1]; the hue wraps around."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a texture photo, standardised to mean 0, std 1: float32 (H, W).

    The crop is flipped or transposed at random and zoomed out by averaging 1x1 to 3x3 blocks
    (as far as the crop still fits in the photo), so one photo gives coarse and fine textures.
    Only images larger than the photo (512 px) need more: they tile it by mirroring.
    """
    source = _textures()[rng.integers(3)]
    if rng.random() < 0.5:
        source = source.T
    side = source.shape[0]  # the photos are square
    zoom = int(rng.integers(1, max(1, min(3, side // max(height, width))) + 1))
    top = rng.integers(max(1, side - height * zoom + 1))
    left = rng.integers(max(1, side - width * zoom + 1))
    rows = _mirror(top + np.arange(height * zoom), side)
    cols = _mirror(left + np.arange(width * zoom), side)
    crop = source[np.ix_(rows, cols)].reshape(height, zoom, width, zoom).mean(axis=(1, 3))
    if rng.random() < 0.5:
        crop = crop[::-1]
    return (crop - crop.mean()) / (crop.std() + 1e-6)


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``[0, n)``: 0 1 .. n-1 n-1 .. 1 0 0 1 .. (tiling by mirroring)."""
    index = index % (2 * n)
    return np.where(index < n, index, 2 * n - 1 - index)


def _duotone(texture: np.ndarray, dark: np.ndarray, light: np.ndarray, contrast: float):
    """Colour a standardised texture (H, W) between two RGB colours: float32 (H, W, 3)."""
    t = np.clip(0.5 + contrast * texture, 0.0, 1.0)[..., None]
    return dark + (light - dark) * t


def _star(dx, dy, points: int, outer: float, inner: float, angle: float) -> np.ndarray:
    """Inside test for a star polygon around the origin: bool, the shape of ``dx``.

    ``points`` tips at radius ``outer`` and notches between them at radius ``inner``. A regular
    polygon is the special case ``inner = outer * cos(pi / points)`` (the notches lie on the
    edges), so this one function draws triangles, squares and stars.
    """
    sector = 2 * np.pi / points
    rho = np.hypot(dx, dy)
    phi = np.mod(np.arctan2(dy, dx) - angle, sector)
    phi = np.minimum(phi, sector - phi)  # fold onto [0, sector / 2]: tip at 0, notch at the end
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    # Inside means: on the same side of the edge tip -> notch as the origin.
    tip_x, notch_x, notch_y = outer, inner * np.cos(sector / 2), inner * np.sin(sector / 2)
    return (notch_x - tip_x) * py - notch_y * (px - tip_x) >= 0


def _shape_mask(kind: str, dx, dy, radius: float, angle: float) -> np.ndarray:
    """One shape of about the same area as a disc of ``radius``, centred at dx = dy = 0."""
    if kind == "circle":
        return dx * dx + dy * dy <= (0.9 * radius) ** 2
    if kind == "square":
        outer = 1.15 * radius
        return _star(dx, dy, 4, outer, outer * np.cos(np.pi / 4), angle)
    if kind == "triangle":
        outer = 1.35 * radius
        return _star(dx, dy, 3, outer, outer * np.cos(np.pi / 3), angle)
    if kind == "star":
        outer = 1.4 * radius
        return _star(dx, dy, 5, outer, 0.5 * outer, angle)
    if kind == "cross":
        u = np.abs(dx * np.cos(angle) + dy * np.sin(angle))
        v = np.abs(-dx * np.sin(angle) + dy * np.cos(angle))
        arm, half_width = 1.1 * radius, 0.4 * radius
        return ((u <= arm) & (v <= half_width)) | ((u <= half_width) & (v <= arm))
    raise ValueError(f"unknown shape {kind!r}")


def _place(rng, centres, radii, radius, height, width, margin, min_distance_ratio, tries=30):
    """A centre ``(y, x)`` for a new object of ``radius``, or None if none fits in ``tries``.

    The centre is at least ``margin`` px inside the image, and at least
    ``min_distance_ratio * (r_i + r_j)`` away from every placed centre: with a ratio below 1,
    objects may overlap (and occlude) but never hide each other completely.
    """
    margin_y, margin_x = min(margin, height / 2), min(margin, width / 2)
    for _ in range(tries):
        centre = rng.uniform((margin_y, margin_x), (height - margin_y, width - margin_x))
        if all(
            np.hypot(*(centre - c)) >= min_distance_ratio * (radius + r)
            for c, r in zip(centres, radii, strict=True)
        ):
            return centre
    return None


def _composite(rng, image, coverages, colours, labels, scale):
    """Paint the visible part of each object onto ``image`` (H, W, 3) and add sensor noise.

    Objects too small to keep become background. Returns ``(image, instances, labels)``.
    """
    height, width = image.shape[:2]
    instances = _paint(coverages, height, width)
    instances, keep = _drop_small(instances, len(labels), min_pixels=round(12 * scale**2))
    for k, original in enumerate(keep, start=1):
        visible = instances == k
        image[visible] = colours[original][visible]
    image = image + rng.normal(0.0, 0.015, image.shape)
    return image, instances, [labels[i] for i in keep]


def _paint(coverages: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Instance map int64 (H, W) from object coverages in paint order: later objects occlude.

    Pixel value k >= 1 means that object k - 1 is visible there; 0 is background.
    """
    instances = np.zeros((height, width), dtype=np.int64)
    for k, coverage in enumerate(coverages, start=1):
        instances[coverage] = k
    return instances


def _drop_small(instances: np.ndarray, count: int, min_pixels: int):
    """Remove instances with fewer than ``min_pixels`` or a box thinner than 2 px; renumber.

    Returns ``(instances, keep)``: the map with ids 1..len(keep), and the original 0-based
    indices of the kept instances. Removed pixels become background; every dataset draws its
    image from the returned map, so image and targets agree. (A box with x1 == x2 would make
    torchvision's Mask R-CNN refuse the target.)
    """
    keep = []
    for k in range(1, count + 1):
        rows, cols = np.nonzero(instances == k)
        if rows.size >= min_pixels and np.ptp(rows) > 0 and np.ptp(cols) > 0:
            keep.append(k)
    lookup = np.zeros(count + 1, dtype=np.int64)
    lookup[keep] = np.arange(1, len(keep) + 1)
    return lookup[instances], [k - 1 for k in keep]


def _to_tensor(image_hwc: np.ndarray) -> torch.Tensor:
    """float (H, W, 3) -> float32 (3, H, W), clipped to [0, 1]."""
    image = np.clip(image_hwc, 0.0, 1.0).astype(np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(image))


def _textured_background(rng, height: int, width: int) -> np.ndarray:
    """A tinted texture crop ("stuff"): muted colours, darker than the objects. (H, W, 3)."""
    hue = rng.random()
    dark = _hsv(hue, rng.uniform(0.1, 0.5), rng.uniform(0.05, 0.25))
    light = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.1, 0.4), rng.uniform(0.4, 0.65))
    return _duotone(_texture(rng, height, width), dark, light, rng.uniform(0.15, 0.3))


# --------------------------------------------------------------------------------------------
# The datasets.


class _SceneDataset(Dataset):
    """Base of the generated datasets: argument checks, seeding, and both item formats.

    A subclass sets ``classes`` and implements ``_draw(rng, height, width)``, which returns
    ``(image, instances, labels)``: image float (H, W, 3), instance map int64 (H, W) with
    0 = background and 1..K, and the K class ids (``labels[k - 1]`` is the class of instance k).
    """

    classes: list[str] = ["background"]

    def __init__(
        self,
        length: int,
        size: int | tuple[int, int] = 64,
        seed: int = 0,
        task: str = "semantic",
    ):
        name = type(self).__name__
        if not _is_int(length) or length < 0:
            raise ValueError(f"{name}: length must be an integer >= 0, got {length!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"{name}: seed must be an integer >= 0, got {seed!r}")
        if task not in TASKS:
            raise ValueError(
                f"{name}: task must be 'semantic' (items are image, mask) or 'instance' "
                f"(items are image, target), got {task!r}"
            )
        self.length, self.seed, self.task = int(length), int(seed), task
        self.size = _check_size(size, name)  # (H, W)

    @property
    def num_classes(self) -> int:
        """Number of classes, background included (the C of logits ``(N, C, H, W)``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(length={self.length}, size={self.size}, seed={self.seed}, "
            f"task={self.task!r})"
        )

    def __getitem__(self, index: int):
        """Item ``index``: ``(image (3, H, W), mask (H, W))`` or ``(image, target)``."""
        image, instances, labels = self._generate(index)
        if self.task == "semantic":
            class_of = np.array([0, *labels], dtype=np.int64)  # instance id -> class id
            return image, torch.from_numpy(class_of[instances])
        return image, _instance_target(instances, labels)

    def instance_map(self, index: int) -> torch.Tensor:
        """Instance ids of item ``index``: int64 (H, W), 0 = background, 1..K the instances.

        Instance ``k`` is ``target["masks"][k - 1]`` of the same item in the instance task.
        """
        return torch.from_numpy(self._generate(index)[1])

    def _generate(self, index: int):
        """``(image float32 (3, H, W) tensor, instances int64 (H, W) array, labels list)``."""
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, index])  # the item depends on (seed, index) only
        image, instances, labels = self._draw(rng, *self.size)
        return _to_tensor(image), instances, labels

    def _check_index(self, index) -> int:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__} indices must be integers, got {type(index).__name__}"
            ) from None
        if -self.length <= index < 0:
            index += self.length  # negative indices count from the end, as for a list
        if not 0 <= index < self.length:
            raise IndexError(
                f"index {index} is out of range for {type(self).__name__} of length "
                f"{self.length}; use 0 <= index < {self.length}, or make a longer dataset"
            )
        return index

    def _draw(self, rng: np.random.Generator, height: int, width: int):
        raise NotImplementedError


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_size(size, name: str) -> tuple[int, int]:
    """``size`` (an int, or ``(H, W)``) -> ``(H, W)``, each at least ``MIN_SIZE``."""
    if _is_int(size):
        height = width = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(map(_is_int, size)):
        height, width = (int(s) for s in size)
    else:
        raise ValueError(f"{name}: size must be an int or a (height, width) pair, got {size!r}")
    if min(height, width) < MIN_SIZE:
        raise ValueError(
            f"{name}: size must be at least {MIN_SIZE} pixels per side, got {size!r}; "
            "use e.g. size=64"
        )
    return height, width


def _instance_target(instances: np.ndarray, labels: list[int]) -> dict[str, torch.Tensor]:
    """torchvision detection target from an instance map (H, W) and the K class ids."""
    ids = np.arange(1, len(labels) + 1)
    masks = (instances[None] == ids[:, None, None]).astype(np.uint8)  # (K, H, W)
    return {
        "boxes": torch.from_numpy(_boxes(masks)),  # (K, 4)
        "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1),  # (K,)
        "masks": torch.from_numpy(masks),
    }


def _boxes(masks: np.ndarray) -> np.ndarray:
    """Boxes of non-empty masks (K, H, W): float32 (K, 4) as ``(x1, y1, x2, y2)``, inclusive.

    The same numbers as ``torchvision.ops.masks_to_boxes`` (the tests check it), in numpy.
    """
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (K, H), (K, W): which rows/cols are hit
    y1, x1 = rows.argmax(axis=1), cols.argmax(axis=1)  # first hit
    y2 = masks.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)  # last hit
    x2 = masks.shape[2] - 1 - cols[:, ::-1].argmax(axis=1)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32).reshape(-1, 4)


class ShapesDataset(_SceneDataset):
    """Coloured shapes ("things") over textured backgrounds ("stuff"), 1 to 4 per image.

    Classes: background, circle, square, triangle, star, cross. Each shape class has its own
    hue (jittered); sizes, rotations, shading and positions vary, and the background is a tinted
    crop of brick, grass or gravel. Objects may overlap: later ones occlude earlier ones, and
    the masks show only what is visible. Radii are 6 to 18 px at size 64 and scale with size.

    >>> image, mask = ShapesDataset(10, size=(48, 80))[0]
    >>> tuple(image.shape), tuple(mask.shape)
    ((3, 48, 80), (48, 80))
    """

    classes = ["background", "circle", "square", "triangle", "star", "cross"]
    hues = [0.0, 0.15, 0.33, 0.58, 0.8]  # one per thing class, in the order of `classes`

    def _draw(self, rng, height, width):
        scale = min(height, width) / 64
        yy, xx = _grid(height, width)
        image = _textured_background(rng, height, width)

        centres, radii, labels, coverages, colours = [], [], [], [], []
        for _ in range(rng.integers(1, 5)):
            radius = rng.uniform(6, 18) * scale
            centre = _place(rng, centres, radii, radius, height, width, 0.6 * radius, 0.7)
            if centre is None:
                continue
            label = int(rng.integers(1, len(self.classes)))
            dy, dx = yy - centre[0], xx - centre[1]
            angle = rng.uniform(0, 2 * np.pi)
            coverages.append(_shape_mask(self.classes[label], dx, dy, radius, angle))
            colour = _hsv(
                self.hues[label - 1] + rng.uniform(-0.03, 0.03),
                rng.uniform(0.6, 1.0),
                rng.uniform(0.75, 1.0),
            )
            light = rng.uniform(0, 2 * np.pi)  # direction of a soft linear shading
            ramp = np.clip((dx * np.cos(light) + dy * np.sin(light)) / radius, -1.5, 1.5)
            colours.append(colour * (1 + 0.12 * ramp)[..., None])  # (H, W, 3)
            centres.append(centre)
            radii.append(radius)
            labels.append(label)

        return _composite(rng, image, coverages, colours, labels, scale)


class DigitsDataset(_SceneDataset):
    """Real handwritten digits (scikit-learn's 8 x 8 digits, upscaled) over textures, 1 to 4.

    Classes: background, "0", ..., "9" (class id = digit + 1). Each digit is one of the 1,797
    scikit-learn images, upscaled with bicubic interpolation to 18 to 30 px (at size 64; scaled
    with size) and thresholded to get its mask; its ink has a random bright colour, so the class
    is in the shape alone. Digits may overlap a little; later ones occlude earlier ones.
    """

    classes = ["background", *(str(digit) for digit in range(10))]

    def _draw(self, rng, height, width):
        scale = min(height, width) / 64
        digit_images, digit_targets = _digits()
        image = _textured_background(rng, height, width)

        centres, radii, labels, coverages, colours = [], [], [], [], []
        for _ in range(rng.integers(1, 5)):
            side = min(round(rng.uniform(18, 30) * scale), height, width)
            centre = _place(rng, centres, radii, side / 2, height, width, side / 2, 0.8)
            if centre is None:
                continue
            pick = int(rng.integers(len(digit_images)))
            ink = _upscale(digit_images[pick], side)  # (side, side) in [0, 1]
            top = int(np.clip(round(centre[0] - side / 2), 0, height - side))
            left = int(np.clip(round(centre[1] - side / 2), 0, width - side))
            window = np.s_[top : top + side, left : left + side]

            coverage = np.zeros((height, width), dtype=bool)
            coverage[window] = ink > rng.uniform(0.3, 0.45)
            colour = np.zeros((height, width, 3), dtype=np.float32)
            ink_colour = _hsv(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.85, 1.0))
            colour[window] = ink_colour * (0.6 + 0.4 * ink)[..., None]
            coverages.append(coverage)
            colours.append(colour)
            centres.append(centre)
            radii.append(side / 2)
            labels.append(int(digit_targets[pick]) + 1)

        return _composite(rng, image, coverages, colours, labels, scale)


def _upscale(digit: np.ndarray, side: int) -> np.ndarray:
    """An 8 x 8 digit in [0, 1] -> (side, side) in [0, 1]: pad 1 px of zeros, bicubic, clip."""
    padded = np.pad(digit, 1)  # (10, 10): strokes that touch the border get a round end
    big = ndimage.zoom(
        padded, side / padded.shape[0], order=3, grid_mode=True, mode="grid-constant"
    )
    return np.clip(big, 0.0, 1.0)


class CellsDataset(_SceneDataset):
    """Packed cell-like blobs, many of them touching, as in a microscopy image.

    Classes: background, cell. Cells are wobbly ellipses (radius 5 to 9 px at size 64, scaled
    with size), most placed right next to an existing cell. Where two cells would overlap, each
    pixel goes to the cell whose outline is relatively nearer (a flat contact line, as packed
    cells have), and then a one-pixel background line separates every pair of touching cells,
    as in the U-Net paper's annotations; the semantic mask alone therefore still separates
    them, and the border-weighted loss has something to weigh. ``instance_map(index)`` gives
    the instance ids for ``unet_weight_map``. Look: dark textured background, bright grainy
    cells with a darker rim and nucleus, blur and noise, in grey, green or magenta.
    """

    classes = ["background", "cell"]
    tints = [(1.0, 1.0, 1.0), (0.45, 1.0, 0.55), (1.0, 0.55, 0.9)]

    def _draw(self, rng, height, width):
        scale = min(height, width) / 64
        yy, xx = _grid(height, width)
        cells = _pack_cells(rng, height, width, scale)

        # Every pixel goes to the cell whose outline is relatively nearest; `distance` is the
        # normalised distance to it (below 1 inside, 1 on the outline). Each cell only looks
        # at the box around it, which keeps large images fast.
        nearest = np.zeros((height, width), dtype=np.int64)
        distance = np.full((height, width), np.inf, dtype=np.float32)
        for k, cell in enumerate(cells):
            window = _cell_window(cell, height, width)
            cell_distance = _cell_distance(yy[window], xx[window], *cell)
            closer = cell_distance < distance[window]
            distance[window][closer] = cell_distance[closer]
            nearest[window][closer] = k
        instances = np.where(distance <= 1, nearest + 1, 0)
        instances = _separate_touching(instances)
        instances, keep = _drop_small(instances, len(cells), min_pixels=round(10 * scale**2))

        count = len(cells)
        brightness = rng.uniform(0.5, 0.9, count)[nearest]  # (H, W), per cell
        nucleus = rng.uniform(0.3, 0.5, count)[nearest]
        rim = 1 - 0.35 * np.minimum(distance, 1.0) ** 6  # darker towards the outline
        cell = brightness * (1 + 0.15 * _texture(rng, height, width)) * rim
        cell = np.where(distance < nucleus, 0.7 * cell, cell)
        background = 0.1 + 0.02 * _texture(rng, height, width)
        intensity = np.where(instances > 0, cell, background)
        intensity = ndimage.gaussian_filter(intensity, sigma=0.6 * scale)
        intensity = intensity + rng.normal(0.0, 0.025, intensity.shape)
        tint = np.array(self.tints[rng.integers(len(self.tints))], dtype=np.float32)
        return intensity[..., None] * tint, instances, [1] * len(keep)


def _pack_cells(rng, height: int, width: int, scale: float) -> list[tuple]:
    """Cells ``(cy, cx, radius, aspect, angle, wobble, phase)``; most touch a neighbour."""
    # 8 to 14 cells in a 64 x 64 image; radii scale with the shorter side, so the count scales
    # with the area measured in cell areas.
    count = max(3, round(rng.uniform(8, 14) * height * width / (64 * scale) ** 2))
    cells = []
    centres, radii = np.empty((count, 2)), np.empty(count)  # of the placed cells, for the checks
    for _ in range(10 * count):
        n = len(cells)
        if n == count:
            break
        radius = rng.uniform(5, 9) * scale
        if n and rng.random() < 0.8:
            # Next to a placed cell: the outlines overlap a little or leave a gap of <= 2 px.
            other = rng.integers(n)
            direction = rng.uniform(0, 2 * np.pi)
            reach = radii[other] + radius + rng.uniform(-0.3 * radius, 2.0)
            centre = centres[other] + reach * np.array([np.sin(direction), np.cos(direction)])
        else:
            centre = rng.uniform((0, 0), (height, width))
        inside = 0 <= centre[0] < height and 0 <= centre[1] < width
        distances = np.hypot(*(centres[:n] - centre).T)
        if not inside or np.any(distances < 0.75 * (radius + radii[:n])):
            continue  # outside, or would swallow too much of a neighbour
        centres[n], radii[n] = centre, radius
        aspect = rng.uniform(1.0, 1.5)
        wobble, phase = rng.uniform(0, 0.08), rng.uniform(0, 2 * np.pi)
        cells.append((centre[0], centre[1], radius, aspect, rng.uniform(0, np.pi), wobble, phase))
    return cells


def _cell_window(cell: tuple, height: int, width: int):
    """The slice of the image that holds one cell (its bounding box plus 1 px)."""
    cy, cx, radius, aspect, _, wobble, _ = cell
    reach = radius * np.sqrt(aspect) * (1 + wobble) + 1
    top, left = max(0, int(cy - reach)), max(0, int(cx - reach))
    return np.s_[top : int(np.ceil(cy + reach)) + 1, left : int(np.ceil(cx + reach)) + 1]


def _cell_distance(yy, xx, cy, cx, radius, aspect, angle, wobble, phase) -> np.ndarray:
    """Normalised distance to one cell, the shape of ``yy``: 1 on its wobbly elliptic outline."""
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)  # along the long axis
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    ellipse = np.hypot(u / np.sqrt(aspect), v * np.sqrt(aspect)) / radius  # area pi radius^2
    return ellipse / (1 + wobble * np.cos(3 * np.arctan2(v, u) + phase))


def _separate_touching(instances: np.ndarray) -> np.ndarray:
    """Background line between touching instances: int64 (H, W) -> (H, W).

    A pixel of instance p becomes background when one of its 8 neighbours belongs to an
    instance q > p. Afterwards no two different instances are neighbours (a gap of 1 px).
    """
    highest_neighbour = ndimage.maximum_filter(instances, size=3, mode="constant")
    return np.where(highest_neighbour > instances, 0, instances)


class RareShapesDataset(_SceneDataset):
    """Large shapes, small clutter and a rare small class: scenes for class-imbalance lessons.

    Classes: background, shape, cross. Two to four large "shape" objects (circles, squares and
    triangles, radius 7 to 13 px at size 64) cover about 17 % of the pixels; the rare class is
    one or two small crosses (radius 3 to 4.5 px), about 1.5 % of the pixels. Two to four small
    discs and squares of the same size as the crosses are clutter and belong to the background.
    Every object, clutter included, takes its colour from the same distribution, so the cross
    class is carried by its shape (and small size) alone, never by its colour. Objects do not
    overlap; sizes scale with ``min(H, W) / 64``. Notebook 07 trains on it with each loss.

    >>> dataset = RareShapesDataset(4, size=48)
    >>> image, mask = dataset[0]
    >>> tuple(image.shape), tuple(mask.shape), dataset.classes
    ((3, 48, 48), (48, 48), ['background', 'shape', 'cross'])
    """

    classes = ["background", "shape", "cross"]
    large_kinds = ("circle", "square", "triangle")
    clutter_kinds = ("circle", "square")

    def _draw(self, rng, height, width):
        scale = min(height, width) / 64
        yy, xx = _grid(height, width)
        image = _textured_background(rng, height, width)
        plan = [  # (role, how many): large shapes first, so that they always find room
            ("shape", int(rng.integers(2, 5))),
            ("cross", int(rng.integers(1, 3))),
            ("clutter", int(rng.integers(2, 5))),
        ]
        centres, radii, labels, coverages, colours = [], [], [], [], []
        for role, count in plan:
            for _ in range(count):
                if role == "shape":
                    radius = rng.uniform(7, 13) * scale
                    kind = self.large_kinds[rng.integers(len(self.large_kinds))]
                else:
                    radius = rng.uniform(3, 4.5) * scale
                    kind = "cross" if role == "cross" else self.clutter_kinds[rng.integers(2)]
                centre = _place(rng, centres, radii, radius, height, width, radius + 1, 1.15)
                if centre is None:
                    continue
                dy, dx = yy - centre[0], xx - centre[1]
                coverage = _shape_mask(kind, dx, dy, radius, rng.uniform(0, 2 * np.pi))
                colour = _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.7, 1.0))
                centres.append(centre)
                radii.append(radius)
                if role == "clutter":  # part of the background: painted straight into it
                    image[coverage] = colour
                    continue
                coverages.append(coverage)
                colours.append(np.broadcast_to(colour, (height, width, 3)))
                labels.append(self.classes.index(role))
        return _composite(rng, image, coverages, colours, labels, scale)


class ScenesDataset(_SceneDataset):
    """Whole scenes in which each idea of the course is measurable (default 128 x 128 px).

    Classes: background, car, plane, disk, square, wire, cross. Every property below exists so
    that one lesson's claim can be measured on it, not read off the data:

    - Colour never gives the class. Every object takes its colour from the same wide
      distribution (any hue, saturation and brightness), whatever its class; a classifier that
      sees one pixel's RGB is close to chance among the object classes. What carries a class is
      its shape, its surface pattern (stripes across the long axis for car and plane, concentric
      rings for disks, a checkerboard for squares, flat for wires and crosses) and, for the
      context pair, the surroundings. Receptive field matters.
    - background (0) is "stuff": the whole image is a scene of one of two kinds, drawn with
      probability 1/2 each (``scene_kind(i)``). The ground is drawn the same way for both
      (a texture photo crop or a smooth gradient, colours from one distribution); only one
      landmark band across the image tells them apart: a road with dashed lane markings in a
      street, a band of soft clouds in a sky.
    - car (1) and plane (2) are THE CONTEXT PAIR ("a car on the road, not in the sky"): both are
      drawn by the same code (a striped capsule 24 to 56 px long, same colour, size, angle and
      pattern distributions); it is a car in a street scene and a plane in a sky scene, nothing
      else differs. Their immediate surroundings are the plain ground that both kinds share, and
      the landmark is usually tens of pixels away: telling car from plane needs evidence from
      the rest of the image (image pooling, pyramid pooling, a large receptive field).
    - disk (3) and square (4) are "things" whose sizes span 10x (radius 3 to 30 px, drawn
      log-uniformly so that small and large are both common). Disks often come as groups of two
      or three that overlap a little (the later one occludes the earlier one): in about half the
      images two disk instances touch, so separating touching instances (05's border weights,
      08's instances) is measurable.
    - wire (5): thin curves 1 or 2 px wide, crossing the image (detailed boundaries: skips, CRF,
      boundary mIoU). They are drawn first, so objects hide parts of them.
    - cross (6): the rare small class: in about a third of the images, 2 to 7 small crosses
      (arms 5 to 9 px from the centre), about 1 % of all pixels (07's class imbalance). Drawn
      last, so never occluded.

    Lengths are given for 128 px and scale with ``min(H, W) / 128``; objects smaller than 12
    px (scaled) after occlusion become background. At the default size a stride-32 encoder
    still has a 4 x 4 map. Generating one 128-px item takes a few milliseconds.

    >>> dataset = ScenesDataset(8)
    >>> image, mask = dataset[0]
    >>> tuple(image.shape), tuple(mask.shape), dataset.num_classes
    ((3, 128, 128), (128, 128), 7)
    >>> dataset.scene_kind(0) in ("street", "sky")
    True
    """

    classes = ["background", "car", "plane", "disk", "square", "wire", "cross"]
    context_pair = ("car", "plane")
    thin_class = "wire"
    rare_class = "cross"
    scene_kinds = ("street", "sky")

    def __init__(
        self,
        length: int,
        size: int | tuple[int, int] = 128,
        seed: int = 0,
        task: str = "semantic",
    ):
        super().__init__(length, size=size, seed=seed, task=task)

    def scene_kind(self, index: int) -> str:
        """``"street"`` or ``"sky"``: the kind of scene of item ``index``.

        Its context-pair objects are cars in a street and planes in a sky. Cheap: only the
        first random number of the item is drawn.
        """
        index = self._check_index(index)
        return _scene_kind(np.random.default_rng([self.seed, index]))

    def _draw(self, rng, height, width):
        kind = _scene_kind(rng)  # the first draw: scene_kind(i) repeats it
        scale = min(height, width) / 128
        yy, xx = _grid(height, width)
        image, reference = _scene_background(rng, kind, height, width, scale)
        centres, radii, labels, coverages, colours = [], [], [], [], []

        def add(label, shape, centre=None, radius=None, reach=None):
            """Draw one object. ``shape(dy, dx)`` gives (coverage, pattern or None) on the
            offsets from ``centre`` inside the window of half-side ``reach`` around it (the
            whole image when ``centre`` is None): only that window is computed, which keeps
            small objects cheap."""
            window = _window(centre, reach, height, width)
            if centre is None:
                coverage, pattern = shape()
            else:
                coverage, pattern = shape(yy[window] - centre[0], xx[window] - centre[1])
            full = np.zeros((height, width), dtype=bool)
            full[window] = coverage
            colour = _object_colour(rng, reference)
            if pattern is None:  # flat
                colours.append(np.broadcast_to(colour, (height, width, 3)))
            else:
                painted = np.zeros((height, width, 3), dtype=np.float32)
                strength = rng.uniform(0.12, 0.25)
                painted[window] = np.clip(colour + strength * pattern[..., None], 0.0, 1.0)
                colours.append(painted)
            coverages.append(full)
            labels.append(self.classes.index(label))
            if radius is not None:  # taken into account by the next _place calls
                centres.append(centre)
                radii.append(radius)

        # Wires first: the objects drawn after them hide parts of them.
        for _ in range(rng.integers(1, 4)):
            add("wire", lambda: (_wire(rng, height, width, scale), None))

        # The context pair: 1 or 2 objects, labelled by the scene kind only.
        pair_label = "car" if kind == "street" else "plane"
        for _ in range(rng.integers(1, 3)):
            length = rng.uniform(24, 56) * scale
            centre = _place(rng, centres, radii, length / 2, height, width, 0.3 * length, 0.8)
            if centre is not None:
                add(pair_label, lambda dy, dx, n=length: _capsule(rng, dy, dx, n, scale),
                    centre, length / 2, length / 2)

        # Squares and single disks, then a group of touching disks in most images.
        shapes = ["square"] * int(rng.integers(0, 3)) + ["disk"] * int(rng.integers(1, 3))
        for label in shapes:
            radius = _log_uniform(rng, 3, 30) * scale
            centre = _place(rng, centres, radii, radius, height, width, 0.5 * radius, 0.9)
            if centre is not None:
                add(label, lambda dy, dx, k=label, r=radius: _thing(rng, k, dy, dx, r, scale),
                    centre, radius, 1.7 * radius)
        if rng.random() < 0.6:
            for centre, radius in _disk_group(rng, centres, radii, height, width, scale):
                # _disk_group has recorded the group's centres already (radius None here).
                add("disk", lambda dy, dx, r=radius: _thing(rng, "disk", dy, dx, r, scale),
                    centre, None, radius)

        # The rare class last (never occluded): in about a third of the images.
        if rng.random() < 0.38:
            for _ in range(rng.integers(2, 8)):
                arm = rng.uniform(5, 9) * scale  # centre to tip
                centre = _place(rng, centres, radii, arm, height, width, arm + 1, 1.0)
                if centre is not None:
                    angle = rng.uniform(0, np.pi / 2)
                    add("cross",
                        lambda dy, dx, a=arm, t=angle: (_shape_mask("cross", dx, dy, a / 1.1, t),
                                                        None),
                        centre, arm, arm)

        return _composite(rng, image, coverages, colours, labels, scale)


def _window(centre, reach, height: int, width: int):
    """The slice of the image within ``reach`` px (+1) of ``centre``; all of it if None."""
    if centre is None:
        return np.s_[:, :]
    top, left = (max(0, int(np.floor(c - reach)) - 1) for c in centre)
    bottom = min(height, int(np.ceil(centre[0] + reach)) + 2)
    right = min(width, int(np.ceil(centre[1] + reach)) + 2)
    return np.s_[top:bottom, left:right]


def _scene_kind(rng: np.random.Generator) -> str:
    """The first draw of a scene: ``"street"`` or ``"sky"`` with probability 1/2 each."""
    return "street" if rng.random() < 0.5 else "sky"


def _log_uniform(rng, low: float, high: float) -> float:
    """A size between ``low`` and ``high`` with a uniform logarithm: each factor of 2 in size
    is as likely as any other, so small and large objects are both common."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _scene_background(rng, kind: str, height: int, width: int, scale: float):
    """The "stuff" of a scene: ``(image (H, W, 3), reference colour (3,))``.

    The ground is drawn the same way for both kinds: two colours from one distribution (so the
    reference colour that objects keep their distance from does not depend on the kind), and
    either a high-frequency texture crop or a smooth gradient, with probability 1/2 each,
    whatever the kind. What tells the kinds apart is a single landmark band crossing the image
    at a random angle and offset (``_landmark``): a road with dashed lane markings in a street,
    a band of soft clouds in a sky. The surroundings of most objects are plain ground, so the
    evidence for "street" or "sky" is usually far from the object: the network has to gather
    it from the whole image.
    """
    hue = rng.random()
    dark = _hsv(hue, rng.uniform(0.0, 0.6), rng.uniform(0.1, 0.5))
    light = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.6), rng.uniform(0.45, 0.9))
    reference = (dark + light) / 2
    yy, xx = _grid(height, width)
    if rng.random() < 0.5:
        image = _duotone(_texture(rng, height, width), dark, light, rng.uniform(0.2, 0.35))
    else:
        t = (yy / max(height - 1, 1))[..., None]
        if rng.random() < 0.5:
            t = 1 - t
        image = (dark + (light - dark) * t).astype(np.float32)
    band, across, along = _landmark(rng, yy, xx, scale)
    if kind == "street":
        # A road: a flat darker band with a dashed line down its middle.
        road = 0.35 * dark + 0.1 * np.float32(0.5)
        image[band] = road
        period = rng.uniform(12, 20) * scale
        dashes = band & (np.abs(across) <= max(1.0, 1.2 * scale)) & (np.mod(along, period) < 0.55 * period)
        image[dashes] = np.float32(0.95)
    else:
        # Clouds: a soft white band (a Gaussian profile across it) whose brightness drifts
        # slowly along it (periods of 40 to 130 px at 128 px: puffs, never dashes).
        drift = np.zeros(yy.shape, dtype=np.float32)
        for _ in range(3):
            frequency = rng.uniform(0.5, 1.5) / (64 * scale)
            drift += np.cos(2 * np.pi * frequency * along + rng.uniform(0, 2 * np.pi)) / 3
        half_width = np.abs(across[band]).max() if band.any() else 1.0
        profile = np.exp(-0.5 * (across / max(half_width, 1.0)) ** 2)
        cloud = np.clip(profile * (0.75 + 0.25 * drift), 0.0, 1.0)[..., None]
        white = 0.2 * light + 0.8 * np.float32(0.97)
        image = image + (white - image) * cloud
    return image.astype(np.float32), reference


def _landmark(rng, yy, xx, scale: float):
    """The band that shows the scene kind: a straight strip 10 to 14 px wide (at 128 px)
    crossing the image at a random angle, its middle line 0.3 to 0.42 of the image side away
    from the image centre (towards an edge, so that most objects are far from it).
    Returns ``(band bool (H, W), across (H, W), along (H, W))``: the band's pixels and the
    signed distance of every pixel across and along the middle line."""
    height, width = yy.shape
    angle = rng.uniform(0, 2 * np.pi)
    normal_x, normal_y = np.cos(angle), np.sin(angle)
    offset = rng.uniform(0.3, 0.42) * min(height, width)
    centre_y = (height - 1) / 2 + offset * normal_y
    centre_x = (width - 1) / 2 + offset * normal_x
    across = (xx - centre_x) * normal_x + (yy - centre_y) * normal_y
    along = -(xx - centre_x) * normal_y + (yy - centre_y) * normal_x
    half_width = rng.uniform(5, 7) * scale
    return np.abs(across) <= half_width, across, along


def _object_colour(rng, reference: np.ndarray) -> np.ndarray:
    """One object's colour, float32 (3,): any hue, saturation and brightness (the class never
    changes the distribution), redrawn (up to 10 times) while it is too close to the
    background's ``reference`` colour, so that every object stays visible."""
    for _ in range(10):
        colour = _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.15, 1.0))
        if np.abs(colour - reference).sum() > 0.35:
            break
    return colour


def _rotate(dx, dy, angle: float):
    """Coordinates ``(u, v)`` along and across the direction ``angle``."""
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _period(rng, scale: float) -> float:
    """Wavelength of a surface pattern, px: 4 to 6 at 128 px, never below 2.5 (aliasing)."""
    return max(rng.uniform(4, 6) * scale, 2.5)


def _capsule(rng, dy, dx, length: float, scale: float):
    """The context pair's shape: a capsule ``length`` long, 0.3 to 0.45 of it wide, any angle,
    striped across its long axis. Returns ``(coverage bool (H, W), pattern (H, W) in [-1, 1])``.
    """
    u, v = _rotate(dx, dy, rng.uniform(0, np.pi))
    half_width = 0.5 * length * rng.uniform(0.3, 0.45)
    along = np.maximum(np.abs(u) - (length / 2 - half_width), 0.0)
    coverage = along * along + v * v <= half_width**2
    return coverage, np.cos(2 * np.pi * u / _period(rng, scale))


def _thing(rng, label: str, dy, dx, radius: float, scale: float):
    """A disk (concentric rings) or a square (checkerboard) of ``radius`` at dx = dy = 0:
    ``(coverage bool (H, W), pattern (H, W) in [-1, 1])``; a square has about a disk's area."""
    period = _period(rng, scale)
    if label == "disk":
        rho = np.hypot(dx, dy)
        return rho <= radius, np.cos(2 * np.pi * rho / period)
    angle = rng.uniform(0, np.pi / 2)
    u, v = _rotate(dx, dy, angle + np.pi / 4)  # _shape_mask's square has its corners at angle
    pattern = np.cos(np.pi * u / period) * np.cos(np.pi * v / period)
    return _shape_mask("square", dx, dy, radius, angle), pattern


def _disk_group(rng, centres, radii, height: int, width: int, scale: float):
    """Centres and radii of 2 or 3 disks that overlap a little: each next disk sits at 0.7 to
    0.95 of the sum of radii from the previous one, so the two instances touch along a contact
    line (the later one occludes the earlier one). Placed like other objects (see ``_place``);
    the group ends early where a disk finds no room. ``centres`` and ``radii`` are extended."""
    group = []
    radius = _log_uniform(rng, 5, 20) * scale
    centre = _place(rng, centres, radii, radius, height, width, 0.7 * radius, 0.9)
    if centre is None:
        return group
    centres.append(centre)
    radii.append(radius)
    group.append((centre, radius))
    for _ in range(int(rng.integers(1, 3))):
        new_radius = _log_uniform(rng, 5, 20) * scale
        for _ in range(10):
            direction = rng.uniform(0, 2 * np.pi)
            reach = (radius + new_radius) * rng.uniform(0.7, 0.95)
            new_centre = centre + reach * np.array([np.sin(direction), np.cos(direction)])
            margin = 0.5 * new_radius
            inside = (margin <= new_centre[0] <= height - margin
                      and margin <= new_centre[1] <= width - margin)
            if inside and all(
                np.hypot(*(new_centre - c)) >= 0.7 * (new_radius + r)
                for c, r in zip(centres[:-1], radii[:-1], strict=True)
            ):
                break
        else:
            return group
        centre, radius = new_centre, new_radius
        centres.append(centre)
        radii.append(radius)
        group.append((centre, radius))
    return group


def _wire(rng, height: int, width: int, scale: float) -> np.ndarray:
    """A thin curve across the image, 1 or 2 px wide: bool (H, W).

    A quadratic Bezier curve from a point on one side of the image to a point on another,
    bent by a random control point; rasterised by sampling it densely (steps well under a
    pixel, so the curve is connected) and, for width 2, adding each pixel's right neighbour.
    """
    def on_border():
        side = rng.integers(4)
        t = rng.uniform(0.1, 0.9)
        return np.array([(0.0, t * width), (height - 1.0, t * width),
                         (t * height, 0.0), (t * height, width - 1.0)][side])

    start, end = on_border(), on_border()
    for _ in range(5):  # avoid a wire hugging one side
        if np.hypot(*(end - start)) > 0.5 * min(height, width):
            break
        end = on_border()
    control = rng.uniform((0, 0), (height, width))
    t = np.linspace(0.0, 1.0, 4 * (height + width))[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # (n, 2)
    rows = np.clip(np.round(points[:, 0]).astype(np.int64), 0, height - 1)
    cols = np.clip(np.round(points[:, 1]).astype(np.int64), 0, width - 1)
    coverage = np.zeros((height, width), dtype=bool)
    coverage[rows, cols] = True
    if rng.random() < 0.5 * min(1.0, 2 * scale):  # width 2 (rarer in small images)
        coverage[rows, np.minimum(cols + 1, width - 1)] = True
    return coverage


# --------------------------------------------------------------------------------------------
# Registry and batching.

DATASETS = {
    "shapes": ShapesDataset,
    "digits": DigitsDataset,
    "cells": CellsDataset,
    "rare": RareShapesDataset,
    "scenes": ScenesDataset,
}


def make_dataset(name: str, length: int, size=None, seed: int = 0, task: str = "semantic"):
    """``make_dataset("shapes", 100)`` is ``ShapesDataset(100)``; names are ``DATASETS``' keys.

    ``size=None`` keeps the dataset's own default (64 px; 128 px for ``"scenes"``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    size_arg = {} if size is None else {"size": size}
    return DATASETS[name](length, seed=seed, task=task, **size_arg)


def collate_instances(batch):
    """DataLoader ``collate_fn`` for instance items: ``(images, targets)``, two tuples.

    Detection models take a list of images and a list of targets, since K differs per image:
    ``DataLoader(ShapesDataset(64, task="instance"), batch_size=4,
    collate_fn=collate_instances)``.
    """
    return tuple(zip(*batch, strict=True))


# --------------------------------------------------------------------------------------------
# Real photos that ship inside scikit-image and scikit-learn (no download).

PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "coins", "china", "flower")


@functools.cache
def _photo_array(name: str) -> np.ndarray:
    """uint8 (H, W, 3) photo as shipped."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    from skimage import data as skdata

    photo = getattr(skdata, name)()
    return np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo


def load_photo(name: str, max_size: int | None = None) -> torch.Tensor:
    """One bundled photo: float32 (3, H, W) in [0, 1].

    ``name`` is one of ``PHOTO_NAMES`` (scikit-image's astronaut, chelsea, coffee, coins (grey,
    repeated to 3 channels); scikit-learn's china and flower). With ``max_size``, the photo is
    shrunk (anti-aliased) so that its longer side is at most ``max_size``; never enlarged.

    >>> load_photo("coffee", max_size=120).shape
    torch.Size([3, 80, 120])
    """
    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}; choose one of {list(PHOTO_NAMES)}")
    photo = np.asarray(_photo_array(name), dtype=np.float32) / 255.0  # (H, W, 3), a new array
    photo = torch.from_numpy(photo).permute(2, 0, 1)  # (3, H, W)
    height, width = photo.shape[-2:]
    if max_size is not None and max(height, width) > max_size:
        factor = max_size / max(height, width)
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        photo = F.interpolate(photo[None], size=size, mode="bilinear", antialias=True)[0]
        photo = photo.clamp(0.0, 1.0)
    return photo.contiguous()


def load_photos(max_size: int | None = None) -> dict[str, torch.Tensor]:
    """All bundled photos: ``{name: float32 (3, H, W) in [0, 1]}``, in ``PHOTO_NAMES`` order."""
    return {name: load_photo(name, max_size) for name in PHOTO_NAMES}
