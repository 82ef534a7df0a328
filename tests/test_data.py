"""Offline datasets: formats, determinism, instance/semantic agreement, touching cells, photos."""

import colorsys
import doctest
import time

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader
from torchvision.ops import masks_to_boxes

import segcourse.data
from segcourse.data import (
    DATASETS,
    CellsDataset,
    DigitsDataset,
    RareShapesDataset,
    ShapesDataset,
    collate_instances,
    load_photo,
    load_photos,
    make_dataset,
)

NAMES = sorted(DATASETS)
SIZES = [32, 64, 97, 128, (48, 80)]
ITEMS = 4  # items checked per case: enough to see 1 to 4 objects, fast on 2 cores


def hw(size):
    return (size, size) if isinstance(size, int) else size


# ---------------------------------------------------------------------------------------------
# Item formats


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_semantic_item_format(name, size):
    dataset = make_dataset(name, ITEMS, size=size, seed=1)
    height, width = hw(size)
    for index in range(ITEMS):
        image, mask = dataset[index]
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert mask.shape == (height, width) and mask.dtype == torch.int64
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert 0 <= mask.min() and mask.max() < dataset.num_classes
        assert (mask == 0).any(), "every scene has some background"
        assert (mask > 0).any(), "every scene has at least one object"


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_instance_item_format(name, size):
    dataset = make_dataset(name, ITEMS, size=size, seed=1, task="instance")
    height, width = hw(size)
    for index in range(ITEMS):
        image, target = dataset[index]
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert set(target) == {"boxes", "labels", "masks"}
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        k = len(labels)
        assert k >= 1
        assert boxes.shape == (k, 4) and boxes.dtype == torch.float32
        assert labels.shape == (k,) and labels.dtype == torch.int64
        assert masks.shape == (k, height, width) and masks.dtype == torch.uint8
        assert ((labels >= 1) & (labels < dataset.num_classes)).all()
        assert set(masks.unique().tolist()) <= {0, 1}
        assert (masks.sum(dim=0) <= 1).all(), "instances do not overlap: occlusion is resolved"
        assert (masks.flatten(1).sum(1) > 0).all(), "no empty (fully occluded) instance"
        # torchvision's convention, and no degenerate box (Mask R-CNN rejects those).
        assert torch.equal(boxes, masks_to_boxes(masks))
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        for box, mask in zip(boxes.long(), masks, strict=True):
            x1, y1, x2, y2 = box.tolist()
            assert mask.sum() == mask[y1 : y2 + 1, x1 : x2 + 1].sum(), "box contains its mask"


@pytest.mark.parametrize("name", NAMES)
def test_instance_and_semantic_agree(name):
    semantic = make_dataset(name, 8, seed=3)
    instance = make_dataset(name, 8, seed=3, task="instance")
    for index in range(8):
        image, mask = semantic[index]
        instance_image, target = instance[index]
        assert torch.equal(image, instance_image)
        painted = torch.zeros_like(mask)
        for label, instance_mask in zip(target["labels"], target["masks"], strict=True):
            painted[instance_mask.bool()] = label
        assert torch.equal(painted, mask)
        # instance_map numbers the same instances in the same order.
        ids = semantic.instance_map(index)
        assert ids.dtype == torch.int64 and ids.shape == mask.shape
        assert ids.max() == len(target["labels"])
        for k, instance_mask in enumerate(target["masks"], start=1):
            assert torch.equal(ids == k, instance_mask.bool())


@pytest.mark.parametrize(
    ("dataset_class", "classes"),
    [
        (ShapesDataset, ["background", "circle", "square", "triangle", "star", "cross"]),
        (DigitsDataset, ["background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
        (CellsDataset, ["background", "cell"]),
        (RareShapesDataset, ["background", "shape", "cross"]),
    ],
)
def test_classes(dataset_class, classes):
    dataset = dataset_class(40, size=32)
    assert dataset.classes == classes and dataset.num_classes == len(classes)
    seen = set()
    for index in range(len(dataset)):
        seen |= set(dataset[index][1].unique().tolist())
    assert seen == set(range(len(classes))), "40 scenes show every class"


# ---------------------------------------------------------------------------------------------
# Determinism


def equal_items(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(equal_items(x, y) for x, y in zip(a, b, strict=True))
    return torch.equal(a, b)


@pytest.mark.parametrize("task", ["semantic", "instance"])
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_and_index_give_the_same_item(name, task):
    first = make_dataset(name, 6, seed=7, task=task)
    second = make_dataset(name, 6, seed=7, task=task)
    forward = [first[i] for i in range(6)]
    torch.manual_seed(123)  # the global RNG states do not matter
    np.random.seed(123)
    backward = [second[i] for i in reversed(range(6))][::-1]  # nor does the order of access
    for a, b in zip(forward, backward, strict=True):
        assert equal_items(a, b)
    assert equal_items(first[-1], first[5]), "negative indices count from the end"


@pytest.mark.parametrize("name", NAMES)
def test_different_seeds_and_indices_differ(name):
    a, b = make_dataset(name, 2, seed=0), make_dataset(name, 2, seed=1)
    assert not torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], a[1][0])


def test_dataloader_batches_semantic_items():
    loader = DataLoader(ShapesDataset(10, size=32), batch_size=4, num_workers=0)
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    assert sum(len(batch[0]) for batch in loader) == 10


def test_collate_instances_keeps_targets_apart():
    dataset = ShapesDataset(6, size=32, task="instance")
    images, targets = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate_instances)))
    assert isinstance(images, tuple) and isinstance(targets, tuple)
    assert len(images) == len(targets) == 3
    assert all(image.shape == (3, 32, 32) for image in images)
    assert equal_items(targets[1], dataset[1][1])


# ---------------------------------------------------------------------------------------------
# What each dataset is for


def test_shapes_have_textured_backgrounds_and_occlusion():
    dataset = ShapesDataset(30, size=64, seed=0, task="instance")
    occluded = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        background = target["masks"].sum(0) == 0
        assert image[:, background].std() > 0.02, "the background is a texture, not flat"
        # A shape that lost part of itself to a later one: its box holds pixels of another.
        ids = dataset.instance_map(index)
        for k, (x1, y1, x2, y2) in enumerate(target["boxes"].long().tolist(), start=1):
            window = ids[y1 : y2 + 1, x1 : x2 + 1]
            occluded += bool((window > k).any())
    assert occluded >= 3, "some objects overlap"


def pairs_within(instances: np.ndarray, pixels: int) -> set[tuple[int, int]]:
    """Pairs of instance ids with pixels at most ``pixels`` apart (chessboard distance)."""
    near = set()
    for k in range(1, instances.max() + 1):
        grown = ndimage.binary_dilation(instances == k, np.ones((3, 3)), iterations=pixels)
        near |= {(k, int(j)) for j in np.unique(instances[grown]) if j > k}
    return near


def test_cells_touch_but_stay_separated():
    dataset = CellsDataset(10, size=64, seed=0)
    one_pixel_gaps = 0
    for index in range(len(dataset)):
        instances = dataset.instance_map(index).numpy()
        assert instances.max() >= 3
        # A background line separates the cells: no two share an edge or a corner...
        assert not pairs_within(instances, 1)
        # ...but many pairs are only one background pixel apart (they "touch").
        one_pixel_gaps += len(pairs_within(instances, 2))
    assert one_pixel_gaps >= 50, f"only {one_pixel_gaps} touching pairs in 10 images"


def test_cells_look_like_microscopy():
    image, mask = CellsDataset(1, size=64, seed=0)[0]
    brightness = image.mean(0)
    assert brightness[mask == 1].mean() > brightness[mask == 0].mean() + 0.25


def test_digits_use_every_digit():
    dataset = DigitsDataset(60, size=32, seed=0, task="instance")
    labels = torch.cat([dataset[index][1]["labels"] for index in range(len(dataset))])
    assert set(labels.tolist()) == set(range(1, 11))


# ---------------------------------------------------------------------------------------------
# Errors say what is wrong and what to do


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"length": -1}, ValueError, "length must be an integer >= 0"),
        ({"length": 2.5}, ValueError, "length must be an integer"),
        ({"length": 4, "size": 8}, ValueError, "at least 16 pixels.*size=64"),
        ({"length": 4, "size": (64, 15)}, ValueError, "at least 16 pixels"),
        ({"length": 4, "size": "big"}, ValueError, r"an int or a \(height, width\) pair"),
        ({"length": 4, "seed": -3}, ValueError, "seed must be an integer >= 0"),
        ({"length": 4, "task": "panoptic"}, ValueError, "'semantic'.*'instance'"),
    ],
)
@pytest.mark.parametrize(
    "dataset_class", [ShapesDataset, DigitsDataset, CellsDataset, RareShapesDataset]
)
def test_bad_arguments(dataset_class, kwargs, error, message):
    with pytest.raises(error, match=message):
        dataset_class(**kwargs)


@pytest.mark.parametrize("index", [4, 100, -5])
def test_index_out_of_range(index):
    dataset = ShapesDataset(4)
    with pytest.raises(IndexError, match=r"out of range .* length 4; use 0 <= index < 4"):
        dataset[index]
    with pytest.raises(IndexError, match="out of range"):
        dataset.instance_map(index)


def test_index_must_be_an_integer():
    with pytest.raises(TypeError, match="indices must be integers"):
        ShapesDataset(4)[1.0]


def test_make_dataset():
    assert isinstance(make_dataset("cells", 3, size=32, seed=2), CellsDataset)
    assert repr(make_dataset("digits", 3)) == (
        "DigitsDataset(length=3, size=(64, 64), seed=0, task='semantic')"
    )
    with pytest.raises(ValueError, match=r"unknown dataset 'blobs'; choose one of \['cells'"):
        make_dataset("blobs", 3)


def test_empty_dataset():
    dataset = ShapesDataset(0)
    assert len(dataset) == 0
    with pytest.raises(IndexError):
        dataset[0]


def test_rare_class_is_rare_small_and_not_told_by_colour():
    dataset = RareShapesDataset(200, size=48, seed=0)
    items = [dataset[i] for i in range(len(dataset))]
    masks = torch.stack([mask for _, mask in items])  # (200, 48, 48)
    fraction = torch.bincount(masks.flatten(), minlength=3).double() / masks.numel()
    assert 0.01 <= fraction[2] <= 0.02, f"crosses cover {fraction[2]:.2%} of the pixels"
    assert 0.10 <= fraction[1] <= 0.25 and fraction[0] > 0.75, fraction
    with_cross = sum(bool((mask == 2).any()) for mask in masks)
    assert with_cross >= 190, "nearly every scene has a cross"
    # Colour alone does not tell crosses apart: their mean hues spread over the colour wheel
    # like those of the large shapes.
    hue_bins = {1: set(), 2: set()}
    for index in range(60):
        image, mask = items[index]
        instances = dataset.instance_map(index)
        for k in instances.unique().tolist()[1:]:
            pixels = image[:, instances == k].mean(1)  # (3,) mean RGB of instance k
            hue = colorsys.rgb_to_hsv(*pixels.tolist())[0]
            label = int(mask[instances == k][0])
            hue_bins[label].add(int(hue * 6))
    assert hue_bins[2] == hue_bins[1] == set(range(6)), hue_bins
    # Clutter of the crosses' size is background: small bright blobs that are not labelled.
    image, mask = items[0]
    bright = image.max(0).values > 0.6
    assert (bright & (mask == 0)).sum() > 20, "clutter is painted into the background"


def test_rare_shapes_are_fast_to_make():
    dataset = RareShapesDataset(64, size=48, seed=3)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    assert time.perf_counter() - start < 5.0, "64 scenes of 48 x 48 in well under a second"


# ---------------------------------------------------------------------------------------------
# Photos


def test_load_photos():
    photos = load_photos()
    assert list(photos) == ["astronaut", "chelsea", "coffee", "coins", "china", "flower"]
    for name, photo in photos.items():
        assert photo.ndim == 3 and photo.shape[0] == 3 and photo.dtype == torch.float32, name
        assert 0.0 <= photo.min() and photo.max() <= 1.0 and photo.std() > 0.05, name
    assert photos["coffee"].shape == (3, 400, 600)
    assert photos["china"].shape == (3, 427, 640)
    assert torch.equal(photos["coins"][0], photos["coins"][2]), "grey photo, 3 equal channels"


@pytest.mark.parametrize(
    ("name", "max_size", "shape"),
    [
        ("coffee", 120, (3, 80, 120)),
        ("astronaut", 64, (3, 64, 64)),
        ("chelsea", 1000, (3, 300, 451)),  # never enlarged
    ],
)
def test_load_photo_max_size(name, max_size, shape):
    photo = load_photo(name, max_size=max_size)
    assert photo.shape == shape
    assert 0.0 <= photo.min() and photo.max() <= 1.0
    # Anti-aliased shrinking keeps the mean colour.
    full = load_photo(name)
    assert torch.allclose(photo.mean((1, 2)), full.mean((1, 2)), atol=0.02)


def test_load_photo_unknown_name():
    with pytest.raises(ValueError, match="unknown photo 'lena'; choose one of"):
        load_photo("lena")


def test_docstring_examples():
    result = doctest.testmod(segcourse.data)
    assert result.attempted > 0 and result.failed == 0
