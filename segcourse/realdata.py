"""Real datasets for users with internet: Oxford-IIIT Pet, Penn-Fudan pedestrians, PASCAL VOC 2012.

Every notebook runs on the offline datasets of ``segcourse.data``; these are for going further.
They return the same item formats (COURSE.md section 3):

- ``OxfordPets`` and ``VOCSegmentation`` (semantic): ``(image, mask)``, image float32
  ``(3, H, W)`` in [0, 1], mask int64 ``(H, W)`` of class ids with ``255`` = ignore.
- ``PennFudan`` (instances): ``(image, target)`` with ``boxes`` float32 ``(K, 4)`` (x1, y1, x2,
  y2 as ``torchvision.ops.masks_to_boxes`` makes them), ``labels`` int64 ``(K,)`` and ``masks``
  uint8 ``(K, H, W)``.

Images come in their own sizes; pass ``size=(H, W)`` (or an int) to resize every pair with
``segcourse.masks.resize_pair`` (bilinear image, nearest-neighbour mask) so that a DataLoader can
batch them.

Where the data lives: ``root``, or else ``data_dir()``: the folder named by the environment
variable ``SEGCOURSE_DATA``, or else ``data/downloads`` in the repository. Nothing is downloaded
unless you pass ``download=True``; downloads use torchvision's utilities, which check each
archive's MD5 (for Penn-Fudan, whose MD5 is not recorded, the content is checked). Without the data (and without a network), the constructor raises one
``DatasetUnavailableError`` that says where it looked, how to get the data, and which offline
dataset to use instead.

>>> pets = OxfordPets(split="trainval", size=128)  # doctest: +SKIP
>>> image, mask = pets[0]  # (3, 128, 128) float32, (128, 128) int64 in {0, 1, 255}
"""

from __future__ import annotations

import os
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.ops import masks_to_boxes

from .masks import IGNORE_INDEX, resize_pair

__all__ = [
    "DATA_ENV_VAR",
    "DatasetUnavailableError",
    "data_dir",
    "OxfordPets",
    "PennFudan",
    "VOCSegmentation",
    "VOC_CLASSES",
]

DATA_ENV_VAR = "SEGCOURSE_DATA"

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

# What a failed download can raise: no network (URLError is an OSError), a checksum mismatch
# (torchvision raises RuntimeError), a truncated archive.
_DOWNLOAD_ERRORS = (
    urllib.error.URLError,
    OSError,
    RuntimeError,
    tarfile.TarError,
    zipfile.BadZipFile,
)


class DatasetUnavailableError(RuntimeError):
    """A real dataset is neither on disk nor downloadable now; the message says what to do."""


def data_dir() -> Path:
    """The default folder for downloaded datasets.

    ``$SEGCOURSE_DATA`` if set (the one environment variable for data); else ``data/downloads``
    in the repository (an editable install); else ``~/.cache/segcourse``.
    """
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    repository = Path(__file__).resolve().parent.parent
    if (repository / "pyproject.toml").is_file():
        return repository / "data" / "downloads"
    return Path.home() / ".cache" / "segcourse"


class _RealDataset(Dataset):
    """Shared by the real datasets: finding, downloading, and the one clear error.

    A subclass describes itself (``title``, ``folder``, ``splits``, ``how_to_get``,
    ``offline``) and implements ``_exists``, ``_download``, ``_open``, ``__len__`` and
    ``__getitem__``.
    """

    title: str  # e.g. "Oxford-IIIT Pet"
    folder: str  # the dataset's folder inside root
    splits: tuple[str, ...]
    how_to_get: str  # URL(s) and the layout to unpack into
    offline: str  # the offline dataset with the same item format
    classes: list[str]
    checksum = "torchvision checks the archives' MD5"

    def __init__(self, root=None, split: str = "train", download: bool = False, size=None):
        """Find the data in ``root`` (default ``data_dir()``), download it if asked, open it.

        ``size``: None (each image keeps its size), an int, or ``(H, W)`` to resize every pair.
        Raises ``DatasetUnavailableError`` when the data is neither there nor downloadable.
        """
        if split not in self.splits:
            raise ValueError(
                f"{self.title}: split must be one of {list(self.splits)}, got {split!r}"
            )
        self.root = Path(root).expanduser() if root is not None else data_dir()
        self.split = split
        self.size = _as_size(size)
        if not self._exists():
            if not download:
                raise DatasetUnavailableError(self._unavailable("it is not there"))
            try:
                self._download()
            except _DOWNLOAD_ERRORS as error:
                raise DatasetUnavailableError(
                    self._unavailable(f"the download failed ({_reason(error)})")
                ) from None  # the message says it all; no traceback wall
            if not self._exists():
                raise DatasetUnavailableError(self._unavailable("the download left no usable data"))
        self._open()

    @property
    def path(self) -> Path:
        """The dataset's folder: ``root / folder``."""
        return self.root / self.folder

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', split={self.split!r}, size={self.size})"

    def _unavailable(self, what: str) -> str:
        name = type(self).__name__
        return (
            f"{self.title} ({self.split!r} split) is not available: {what}. Looked in {self.path}\n"
            f"  - with internet: {name}(download=True) downloads it there ({self.checksum});\n"
            f"  - by hand: {self.how_to_get}\n"
            f"  - somewhere else: pass root=... or set {DATA_ENV_VAR} to the folder that holds "
            f"'{Path(self.folder).parts[0]}';\n"
            f"  - offline: use {self.offline} instead; it returns the same item format."
        )

    def _resize(self, image: torch.Tensor, mask: torch.Tensor):
        return (image, mask) if self.size is None else resize_pair(image, mask, self.size)

    def _exists(self) -> bool:
        raise NotImplementedError

    def _download(self) -> None:
        raise NotImplementedError

    def _open(self) -> None:
        raise NotImplementedError


def _as_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise ValueError(f"size must be None, an int or a (height, width) pair, got {size!r}")


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or str(error) or type(error).__name__
    return f"{type(error).__name__}: {reason}"


def _image_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float32 (3, H, W) in [0, 1]."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3), a copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255.0).contiguous()


class OxfordPets(_RealDataset):
    """Oxford-IIIT Pet, for semantic segmentation: pet vs background (7,349 photos of 37 breeds).

    The trimaps label each pixel 1 (pet), 2 (background) or 3 (the uncertain border around
    the pet); we map them to classes 1 (pet), 0 (background) and 255 (ignore: the border is not
    scored). Splits: "trainval" (3,680) and "test" (3,669). Read with
    ``torchvision.datasets.OxfordIIITPet(target_types="segmentation")`` from
    ``root/oxford-iiit-pet``.

    ``OxfordPets(size=128)[i]`` -> ``(image (3, 128, 128) float32, mask (128, 128) int64)``.
    """

    title = "Oxford-IIIT Pet"
    folder = "oxford-iiit-pet"
    splits = ("trainval", "test")
    classes = ["background", "pet"]
    how_to_get = (
        "download images.tar.gz and annotations.tar.gz from "
        "https://www.robots.ox.ac.uk/~vgg/data/pets/ (about 800 MB) and unpack both into "
        "'oxford-iiit-pet', giving oxford-iiit-pet/images/*.jpg and "
        "oxford-iiit-pet/annotations/{trainval.txt, test.txt, trimaps/*.png};"
    )
    offline = "segcourse.data.ShapesDataset(length, task='semantic')"

    # trimap value -> class id: 1 pet -> 1, 2 background -> 0, 3 border -> ignore.
    TRIMAP_TO_CLASS = np.full(256, IGNORE_INDEX, dtype=np.int64)
    TRIMAP_TO_CLASS[[1, 2]] = [1, 0]

    def __init__(self, root=None, split: str = "trainval", download: bool = False, size=None):
        super().__init__(root, split, download, size)

    def _exists(self) -> bool:
        annotations = self.path / "annotations"
        return (
            (self.path / "images").is_dir()
            and (annotations / "trimaps").is_dir()
            and (annotations / f"{self.split}.txt").is_file()
        )

    def _download(self) -> None:
        tvd.OxfordIIITPet(self.root, split=self.split, target_types="segmentation", download=True)

    def _open(self) -> None:
        self._reader = tvd.OxfordIIITPet(self.root, split=self.split, target_types="segmentation")

    def __len__(self) -> int:
        return len(self._reader)

    def __getitem__(self, index: int):
        """``(image float32 (3, H, W), mask int64 (H, W))`` with 0, 1 and 255."""
        image, trimap = self._reader[index]
        mask = torch.from_numpy(self.TRIMAP_TO_CLASS[np.asarray(trimap)])
        return self._resize(_image_tensor(image), mask)


class VOCSegmentation(_RealDataset):
    """PASCAL VOC 2012 semantic segmentation: 20 object classes + background.

    Masks are palette PNGs whose indices are the class ids (``VOC_CLASSES``), with 255 on the
    thin border drawn around each object and on "difficult" regions: 255 is also our ignore
    index, so the masks are used as they are. Splits: "train" (1,464), "val" (1,449) and
    "trainval". Read with ``torchvision.datasets.VOCSegmentation(year="2012")`` from
    ``root/VOCdevkit/VOC2012``.
    """

    title = "PASCAL VOC 2012"
    folder = "VOCdevkit/VOC2012"
    splits = ("train", "val", "trainval")
    classes = VOC_CLASSES
    how_to_get = (
        f"download {tvd.voc.DATASET_YEAR_DICT['2012']['url']} (about 2 GB) and unpack it in "
        "root, giving "
        "VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation};"
    )
    offline = "segcourse.data.ShapesDataset(length, task='semantic')"

    def __init__(self, root=None, split: str = "train", download: bool = False, size=None):
        super().__init__(root, split, download, size)

    def _exists(self) -> bool:
        return (
            (self.path / "JPEGImages").is_dir()
            and (self.path / "SegmentationClass").is_dir()
            and (self.path / "ImageSets" / "Segmentation" / f"{self.split}.txt").is_file()
        )

    def _download(self) -> None:
        tvd.VOCSegmentation(self.root, year="2012", image_set=self.split, download=True)

    def _open(self) -> None:
        self._reader = tvd.VOCSegmentation(self.root, year="2012", image_set=self.split)

    def __len__(self) -> int:
        return len(self._reader)

    def __getitem__(self, index: int):
        """``(image float32 (3, H, W), mask int64 (H, W))``: ids 0..20 and 255."""
        image, target = self._reader[index]
        mask = torch.from_numpy(np.array(target, dtype=np.int64))  # palette indices = class ids
        return self._resize(_image_tensor(image), mask)


class PennFudan(_RealDataset):
    """Penn-Fudan pedestrians, for instance segmentation: 170 photos, 345 people.

    Each ``PedMasks/<name>_mask.png`` holds 0 for background and 1, 2, ... for the people in
    ``PNGImages/<name>.png``. There is no official split; ours is deterministic and mixes both
    sources (Fudan and Penn): in sorted order, every fifth image (index 4, 9, ...) is "test"
    (34 images) and the others are "train" (136); "all" is all 170. There is no torchvision
    loader: the folder is read with PIL.

    ``PennFudan(split="train")[i]`` -> ``(image (3, H, W) float32, target)`` with ``boxes``
    float32 (K, 4), ``labels`` int64 (K,) (all 1, "person") and ``masks`` uint8 (K, H, W).
    """

    title = "Penn-Fudan pedestrians"
    folder = "PennFudanPed"
    splits = ("train", "test", "all")
    classes = ["background", "person"]
    URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
    # The MD5 of PennFudanPed.zip could not be verified when this was written (no network), so
    # it is not recorded; torchvision then skips the check, and `_download` checks the content
    # (170 images, each with a mask) instead. Record it here once verified.
    MD5: str | None = None
    NUM_IMAGES = 170
    checksum = "MD5-checked" if MD5 else f"checked for {NUM_IMAGES} image/mask pairs"
    how_to_get = (
        f"download {URL} (about 50 MB) and unzip it in root, giving "
        "PennFudanPed/PNGImages/*.png and PennFudanPed/PedMasks/*_mask.png;"
    )
    offline = "segcourse.data.ShapesDataset(length, task='instance')"

    def __init__(self, root=None, split: str = "train", download: bool = False, size=None):
        super().__init__(root, split, download, size)

    def _pairs(self) -> list[tuple[Path, Path]]:
        """(image, mask) paths, sorted by name, of the images that have a mask."""
        images = sorted((self.path / "PNGImages").glob("*.png"))
        pairs = [(image, self.path / "PedMasks" / f"{image.stem}_mask.png") for image in images]
        return [(image, mask) for image, mask in pairs if mask.is_file()]

    def _exists(self) -> bool:
        return (self.path / "PNGImages").is_dir() and len(self._pairs()) > 0

    def _download(self) -> None:
        download_and_extract_archive(self.URL, download_root=str(self.root), md5=self.MD5)
        if len(self._pairs()) != self.NUM_IMAGES:
            raise RuntimeError(
                f"the archive gave {len(self._pairs())} image/mask pairs, "
                f"expected {self.NUM_IMAGES}"
            )

    def _open(self) -> None:
        pairs = self._pairs()
        if self.split == "train":
            pairs = [pair for i, pair in enumerate(pairs) if i % 5 != 4]
        elif self.split == "test":
            pairs = [pair for i, pair in enumerate(pairs) if i % 5 == 4]
        self._items = pairs

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int):
        """``(image float32 (3, H, W), target)``: one instance per person id in the mask."""
        image_path, mask_path = self._items[index]
        image = _image_tensor(Image.open(image_path))
        instances = torch.from_numpy(np.array(Image.open(mask_path), dtype=np.int64))  # (H, W)
        image, instances = self._resize(image, instances)
        ids = instances.unique()
        ids = ids[ids > 0]  # background is 0
        masks = (instances[None] == ids[:, None, None]).to(torch.uint8)  # (K, H, W)
        target = {
            "boxes": masks_to_boxes(masks).float(),  # (K, 4)
            "labels": torch.ones(len(ids), dtype=torch.int64),  # (K,): all "person"
            "masks": masks,
        }
        return image, target
