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
    ScenesDataset,
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
    "dataset_class", [ShapesDataset, DigitsDataset, CellsDataset, RareShapesDataset, ScenesDataset]
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
# ScenesDataset: each property the course measures on it, checked over 200 scenes


SCENES = 200
OBJECTS = range(1, 7)  # car, plane, disk, square, wire, cross


@pytest.fixture(scope="module")
def scenes():
    """200 default (128 px) scenes: semantic items, instance targets and scene kinds."""
    semantic = ScenesDataset(SCENES, seed=0)
    instance = ScenesDataset(SCENES, seed=0, task="instance")
    items = [semantic[i] for i in range(SCENES)]
    return {
        "dataset": semantic,
        "images": torch.stack([image for image, _ in items]),  # (200, 3, 128, 128)
        "masks": torch.stack([mask for _, mask in items]),  # (200, 128, 128)
        "targets": [instance[i][1] for i in range(SCENES)],
        "kinds": [semantic.scene_kind(i) for i in range(SCENES)],
    }


def test_scenes_interface():
    dataset = ScenesDataset(3)
    assert dataset.size == (128, 128), "default 128 px: a stride-32 encoder keeps a 4 x 4 map"
    assert dataset.classes == ["background", "car", "plane", "disk", "square", "wire", "cross"]
    assert dataset.num_classes == 7
    assert ScenesDataset.context_pair == ("car", "plane")
    assert ScenesDataset.thin_class == "wire" and ScenesDataset.rare_class == "cross"
    assert DATASETS["scenes"] is ScenesDataset
    assert make_dataset("scenes", 2).size == (128, 128), "make_dataset keeps the default size"
    assert make_dataset("shapes", 2).size == (64, 64)
    assert make_dataset("scenes", 2, size=64).size == (64, 64)
    with pytest.raises(IndexError, match="out of range"):
        dataset.scene_kind(3)


def test_scenes_do_not_depend_on_dataloader_workers_or_order():
    dataset = ScenesDataset(8, size=64, seed=4)
    direct = [dataset[i] for i in range(8)]
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    images, masks = (torch.cat(parts) for parts in zip(*loader, strict=True))
    assert torch.equal(images, torch.stack([image for image, _ in direct]))
    assert torch.equal(masks, torch.stack([mask for _, mask in direct]))
    shuffled = [dataset[i] for i in (5, 2, 7, 0)]
    assert all(equal_items(shuffled[k], direct[i]) for k, i in enumerate((5, 2, 7, 0)))
    kinds = [ScenesDataset(8, size=64, seed=4).scene_kind(i) for i in range(8)]
    assert kinds == [dataset.scene_kind(i) for i in reversed(range(8))][::-1]


def test_scenes_instance_targets_paint_the_semantic_mask(scenes):
    for mask, target in zip(scenes["masks"][:50], scenes["targets"][:50], strict=True):
        painted = torch.zeros_like(mask)
        for label, instance_mask in zip(target["labels"], target["masks"], strict=True):
            painted[instance_mask.bool()] = label
        assert torch.equal(painted, mask)


def test_scenes_class_statistics(scenes):
    masks = scenes["masks"]
    fraction = torch.bincount(masks.flatten(), minlength=7).double() / masks.numel()
    present = torch.stack([(masks == c).flatten(1).any(1) for c in range(7)]).double().mean(1)
    cross, wire = fraction[6], fraction[5]
    assert 0.005 <= cross <= 0.02, f"the rare class covers {cross:.2%} of the pixels"
    assert 0.2 <= present[6] <= 0.45, f"crosses in {present[6]:.0%} of the scenes"
    assert cross < fraction[1:6].min(), "the cross is the rarest class"
    assert 0.005 <= wire <= 0.05 and present[5] == 1.0, "every scene has wires, thin ones"
    assert present[3] >= 0.95, "nearly every scene has disks"
    assert fraction[0] > 0.6, "background is most of every scene"
    # Wires are thin: eroding the wire mask by a 3 x 3 square leaves almost nothing.
    wires = (masks == 5).numpy()
    eroded = ndimage.binary_erosion(wires, np.ones((1, 3, 3)))
    assert eroded.sum() < 0.05 * wires.sum()


def test_scenes_disk_sizes_span_ten_times(scenes):
    radii = []  # half the longer box side of each disk instance: its radius when not cut
    for target in scenes["targets"]:
        for label, box in zip(target["labels"], target["boxes"], strict=True):
            if label == 3:
                radii.append(float(max(box[2] - box[0], box[3] - box[1]) + 1) / 2)
    radii = np.array(radii)
    assert radii.min() <= 4 and radii.max() >= 25, (radii.min(), radii.max())
    low, high = np.percentile(radii, [10, 90])
    assert high / low >= 3, "small and large disks are both common (log-uniform sizes)"


def test_scenes_have_touching_disks(scenes):
    def touching(target) -> bool:
        disks = [m.numpy().astype(bool) for m, label in
                 zip(target["masks"], target["labels"], strict=True) if label == 3]
        for a, first in enumerate(disks):
            grown = ndimage.binary_dilation(first, np.ones((3, 3)))
            if any((grown & second).any() for second in disks[a + 1:]):
                return True
        return False

    share = np.mean([touching(target) for target in scenes["targets"]])
    assert share >= 1 / 3, f"two disk instances touch in {share:.0%} of the scenes"


def test_scenes_context_pair_is_labelled_by_the_scene_kind(scenes):
    kinds = scenes["kinds"]
    assert 0.4 <= kinds.count("street") / SCENES <= 0.6
    for mask, kind in zip(scenes["masks"], kinds, strict=True):
        if kind == "street":
            assert not (mask == 2).any(), "no plane in a street"
        else:
            assert not (mask == 1).any(), "no car in the sky"
    with_pair = [bool(((mask == 1) | (mask == 2)).any()) for mask in scenes["masks"]]
    assert np.mean(with_pair) >= 0.9, "nearly every scene shows its context-pair object"



def _pair_landmark_distances(dataset, monkeypatch) -> np.ndarray:
    """Chessboard distance from every car or plane pixel of ``dataset`` to its scene's landmark
    band (caught as it is drawn: the dataset does not expose it)."""
    bands = []
    draw_band = segcourse.data._landmark

    def spy(*args, **kwargs):
        band = draw_band(*args, **kwargs)
        bands.append(band[0])
        return band

    monkeypatch.setattr(segcourse.data, "_landmark", spy)
    distances = []
    for index in range(len(dataset)):
        bands.clear()
        mask = dataset[index][1].numpy()
        pair = (mask == 1) | (mask == 2)
        distance = ndimage.distance_transform_cdt(~bands[0], metric="chessboard")
        distances.append(distance[pair])
    return np.concatenate(distances)


def test_scenes_context_is_far_from_the_pair(monkeypatch):
    """The evidence for street or sky (the landmark band) is usually far from the car or plane:
    a small receptive field centred on the object sees only ground that both kinds share."""
    distances = _pair_landmark_distances(segcourse.data.ScenesDataset(60, seed=5), monkeypatch)
    assert np.median(distances) >= 20, "the landmark should be tens of pixels from most pair pixels"
    assert np.mean(distances < 8) <= 0.3, "few pair pixels should see the landmark within 8 px"


def test_at_128_px_the_landmark_can_lie_beyond_a_107_px_receptive_field(monkeypatch):
    """Notebook 06's claim: DeepLabV3Plus's layer3 sees 107 x 107 pixels (53 on each side).
    On 64-px scenes every car or plane pixel has its landmark within 53 px; on 128-px scenes
    a good share (20 % over 200 scenes when measured) do not, so global context can help."""
    far = _pair_landmark_distances(segcourse.data.ScenesDataset(100, seed=0), monkeypatch) > 53
    near = _pair_landmark_distances(segcourse.data.ScenesDataset(100, size=64, seed=0), monkeypatch) > 53
    assert far.mean() >= 0.1 and not near.any()

def _instance_features(scenes, label) -> np.ndarray:
    """Per instance of ``label``: mean R, G, B, area, std of the brightness inside."""
    rows = []
    for image, target in zip(scenes["images"], scenes["targets"], strict=True):
        for instance_label, mask in zip(target["labels"], target["masks"], strict=True):
            if instance_label == label:
                pixels = image[:, mask.bool()]  # (3, n)
                rows.append([*pixels.mean(1).tolist(), pixels.shape[1],
                             float(pixels.mean(0).std())])
    return np.array(rows)


def test_scenes_car_and_plane_look_alike(scenes):
    from scipy.stats import ks_2samp

    car, plane, disk = (_instance_features(scenes, label) for label in (1, 2, 3))
    assert len(car) >= 100 and len(plane) >= 100
    # Same distributions of colour, size and texture contrast (two-sample Kolmogorov-Smirnov
    # statistic: the largest gap between the two empirical CDFs; about 0.15 is what two
    # samples of ~150 from one distribution reach by chance).
    for j, feature in enumerate(["red", "green", "blue", "area", "texture std"]):
        statistic = ks_2samp(car[:, j], plane[:, j]).statistic
        assert statistic < 0.2, f"car and plane differ in {feature}: KS {statistic:.3f}"
    # The test can see a difference where there is one: disks have another size distribution.
    assert ks_2samp(car[:, 3], disk[:, 3]).statistic > 0.3


def test_scenes_colour_does_not_give_the_class(scenes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    images, masks = scenes["images"], scenes["masks"]
    rng = np.random.default_rng(0)

    def object_pixels(items):  # RGB (n, 3) and class (n,) of 20,000 object pixels
        mask = masks[items]
        rgb = images[items].permute(0, 2, 3, 1)[mask > 0].numpy()
        labels = mask[mask > 0].numpy()
        pick = rng.choice(len(labels), 20_000, replace=False)
        return rgb[pick], labels[pick]

    x_train, y_train = object_pixels(slice(0, 100))
    x_test, y_test = object_pixels(slice(100, 200))
    assert set(y_test) == set(OBJECTS)
    classifier = LogisticRegression(max_iter=500, class_weight="balanced").fit(x_train, y_train)
    score = balanced_accuracy_score(y_test, classifier.predict(x_test))
    means = np.stack([x_train[y_train == c].mean(0) for c in OBJECTS])  # (6, 3)
    nearest = 1 + np.argmin(((x_test[:, None] - means) ** 2).sum(-1), axis=1)
    nearest_score = balanced_accuracy_score(y_test, nearest)
    # Chance is 1/6 = 0.167 and a perfect classifier scores 1.0; colour alone stays at chance.
    assert score < 0.25 and nearest_score < 0.25, (score, nearest_score)


def test_scenes_scale_with_size():
    for size in (32, 64, (96, 160)):
        dataset = ScenesDataset(20, size=size, seed=1)
        masks = torch.stack([dataset[i][1] for i in range(20)])
        fraction = (masks > 0).double().mean()
        assert 0.1 <= fraction <= 0.4, f"objects cover {fraction:.0%} at size {size}"


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
