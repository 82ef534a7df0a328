"""Real-dataset loaders, on small fake folders in each dataset's on-disk layout (no network)."""

import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segcourse.realdata as realdata
from segcourse.masks import PALETTE
from segcourse.realdata import (
    DatasetUnavailableError,
    OxfordPets,
    PennFudan,
    VOCSegmentation,
    data_dir,
)

HEIGHT, WIDTH = 24, 32


def write_photo(path: Path, seed: int) -> None:
    """A random RGB image; JPEG or PNG by the file's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8))  # mode "L"
    if palette:  # VOC style: a palette PNG whose indices are the class ids
        image = image.convert("P")
        image.putpalette(np.round(PALETTE * 255).astype(np.uint8).flatten().tolist())
    image.save(path)


def trimap() -> np.ndarray:
    """Pets trimap: 2 background, 1 pet, 3 the border between them."""
    values = np.full((HEIGHT, WIDTH), 2, dtype=np.uint8)
    values[4:20, 8:24] = 3
    values[6:18, 10:22] = 1
    return values


def voc_mask(label: int) -> np.ndarray:
    """VOC mask: 0 background, one object of ``label`` with a 255 border around it."""
    values = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    values[4:20, 8:24] = 255
    values[6:18, 10:22] = label
    return values


def people(count: int) -> np.ndarray:
    """Penn-Fudan mask: 0 background, people 1..count side by side."""
    values = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for person in range(1, count + 1):
        values[4:20, 6 * person - 4 : 6 * person] = person
    return values


def make_pets(root: Path, names=("Abyssinian_1", "beagle_12")) -> None:
    base = root / "oxford-iiit-pet"
    lines = []
    for i, name in enumerate(names):
        write_photo(base / "images" / f"{name}.jpg", seed=i)
        write_png(base / "annotations" / "trimaps" / f"{name}.png", trimap())
        lines.append(f"{name} {i + 1} {i % 2 + 1} 1")  # image id, class, species, breed id
    (base / "annotations" / "trainval.txt").write_text("\n".join(lines) + "\n")


def make_voc(root: Path, labels=(15, 12, 1)) -> None:
    base = root / "VOCdevkit" / "VOC2012"
    names = [f"2007_{i:06d}" for i in range(len(labels))]
    for i, (name, label) in enumerate(zip(names, labels, strict=True)):
        write_photo(base / "JPEGImages" / f"{name}.jpg", seed=i)
        write_png(base / "SegmentationClass" / f"{name}.png", voc_mask(label), palette=True)
    split = base / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\n".join(names) + "\n")


def make_penn_fudan(root: Path, counts=(1, 2, 3, 1, 2)) -> None:
    base = root / "PennFudanPed"
    for i, count in enumerate(counts, start=1):
        write_photo(base / "PNGImages" / f"FudanPed{i:05d}.png", seed=i)
        write_png(base / "PedMasks" / f"FudanPed{i:05d}_mask.png", people(count))


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("size", [None, 16, (20, 28)])
def test_oxford_pets(tmp_path, size):
    make_pets(tmp_path)
    pets = OxfordPets(tmp_path, size=size)
    assert len(pets) == 2 and pets.classes == ["background", "pet"]
    image, mask = pets[1]
    height, width = (HEIGHT, WIDTH) if size is None else realdata._as_size(size)
    assert image.shape == (3, height, width) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (height, width) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) == {0, 1, 255}
    if size is None:  # trimap 1 pet -> 1, 2 background -> 0, 3 border -> ignore
        expected = torch.from_numpy(trimap().astype(np.int64))
        expected = torch.tensor([255, 1, 0, 255])[expected]
        assert torch.equal(mask, expected)


@pytest.mark.parametrize("size", [None, 40])
def test_voc_segmentation(tmp_path, size):
    make_voc(tmp_path)
    voc = VOCSegmentation(tmp_path, split="train", size=size)
    assert len(voc) == 3 and len(voc.classes) == 21
    assert voc.classes[0] == "background" and voc.classes[15] == "person"
    for index, label in enumerate((15, 12, 1)):
        image, mask = voc[index]
        height, width = (HEIGHT, WIDTH) if size is None else (size, size)
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        assert mask.shape == (height, width) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) == {0, label, 255}
        if size is None:  # palette indices are the class ids; 255 stays ignore
            assert torch.equal(mask, torch.from_numpy(voc_mask(label).astype(np.int64)))


@pytest.mark.parametrize("size", [None, (48, 64)])
def test_penn_fudan(tmp_path, size):
    counts = (1, 2, 3, 1, 2)
    make_penn_fudan(tmp_path, counts)
    dataset = PennFudan(tmp_path, split="all", size=size)
    assert len(dataset) == len(counts) and dataset.classes == ["background", "person"]
    height, width = (HEIGHT, WIDTH) if size is None else size
    for index, count in enumerate(counts):
        image, target = dataset[index]
        assert image.shape == (3, height, width) and image.dtype == torch.float32
        boxes, labels, masks = target["boxes"], target["labels"], target["masks"]
        assert labels.dtype == torch.int64 and torch.equal(
            labels, torch.ones(count, dtype=torch.int64)
        )
        assert masks.shape == (count, height, width) and masks.dtype == torch.uint8
        assert boxes.shape == (count, 4) and boxes.dtype == torch.float32
        if size is None:
            expected = torch.from_numpy(people(count).astype(np.int64))
            for person in range(1, count + 1):
                assert torch.equal(masks[person - 1].bool(), expected == person)
                left = 6 * person - 4
                assert boxes[person - 1].tolist() == [left, 4, left + 3, 19]  # inclusive


def test_penn_fudan_splits_partition_the_images(tmp_path):
    make_penn_fudan(tmp_path, counts=(1,) * 12)
    train, test = PennFudan(tmp_path, split="train"), PennFudan(tmp_path, split="test")
    assert (len(train), len(test)) == (10, 2)  # every fifth image is a test image
    assert {path for path, _ in train._items}.isdisjoint(path for path, _ in test._items)


@pytest.mark.parametrize("dataset_class", [OxfordPets, VOCSegmentation, PennFudan])
def test_bad_split(tmp_path, dataset_class):
    with pytest.raises(ValueError, match="split must be one of"):
        dataset_class(tmp_path, split="nope")


# ---------------------------------------------------------------------------------------------
# No data, no network: one clear error


OFFLINE = {
    OxfordPets: ("Oxford-IIIT Pet", "oxford-iiit-pet", "ShapesDataset(length, task='semantic')"),
    VOCSegmentation: ("PASCAL VOC 2012", "VOC2012", "ShapesDataset(length, task='semantic')"),
    PennFudan: ("Penn-Fudan", "PennFudanPed", "ShapesDataset(length, task='instance')"),
}


def assert_helpful(error: DatasetUnavailableError, dataset_class, root: Path) -> None:
    title, folder, alternative = OFFLINE[dataset_class]
    message = str(error)
    assert title in message
    assert str(root) in message and folder in message, "says where it looked"
    assert "download=True" in message and "SEGCOURSE_DATA" in message, "says how to get it"
    assert f"segcourse.data.{alternative}" in message, "names the offline alternative"
    no_chain = error.__context__ is None or error.__suppress_context__
    assert error.__cause__ is None and no_chain, "no chained traceback"


@pytest.mark.parametrize("dataset_class", list(OFFLINE))
def test_missing_data_without_download(tmp_path, dataset_class):
    with pytest.raises(DatasetUnavailableError) as caught:
        dataset_class(tmp_path / "nowhere", download=False)
    assert_helpful(caught.value, dataset_class, tmp_path / "nowhere")
    assert "not there" in str(caught.value)
    assert isinstance(caught.value, RuntimeError)


@pytest.mark.parametrize("dataset_class", list(OFFLINE))
def test_download_without_network(tmp_path, monkeypatch, dataset_class):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # The lowest level every torchvision download goes through.
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetUnavailableError) as caught:
        dataset_class(tmp_path, download=True)
    assert_helpful(caught.value, dataset_class, tmp_path)
    assert "download failed (URLError: [Errno -3] Temporary failure" in str(caught.value)


def test_penn_fudan_download_then_load(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, md5))
        make_penn_fudan(Path(download_root), counts=(1,) * PennFudan.NUM_IMAGES)

    monkeypatch.setattr(realdata, "download_and_extract_archive", fake_download)
    dataset = PennFudan(tmp_path, split="test", download=True)
    assert calls == [(PennFudan.URL, PennFudan.MD5)]
    assert len(dataset) == PennFudan.NUM_IMAGES // 5
    PennFudan(tmp_path, download=True)  # already there: no second download
    assert len(calls) == 1


def test_penn_fudan_download_with_wrong_content(tmp_path, monkeypatch):
    def truncated(url, download_root, md5=None, **kwargs):
        make_penn_fudan(Path(download_root), counts=(1, 1))

    monkeypatch.setattr(realdata, "download_and_extract_archive", truncated)
    with pytest.raises(DatasetUnavailableError, match="gave 2 image/mask pairs, expected 170"):
        PennFudan(tmp_path, download=True)


def test_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGCOURSE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    make_pets(tmp_path)
    assert len(OxfordPets()) == 2, "the default root is data_dir()"
    monkeypatch.delenv("SEGCOURSE_DATA")
    repository = Path(realdata.__file__).resolve().parent.parent
    assert data_dir() == repository / "data" / "downloads"
