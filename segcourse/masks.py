"""Mask rules, in one place: the ignore label, the colour palette, and paired transforms.

Conventions (COURSE.md section 3):

- images are float32 ``(3, H, W)`` in [0, 1] (a batch: ``(N, 3, H, W)``);
- masks are int64 ``(H, W)`` of class ids, with ``IGNORE_INDEX = 255`` for "do not score";
- an image and its mask are always transformed together: the image with bilinear
  interpolation, the mask with nearest neighbour, and padding of a mask uses ``IGNORE_INDEX``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "PALETTE",
    "colorize",
    "resize_pair",
    "pad_pair",
    "hflip_pair",
    "random_crop_pair",
]

IGNORE_INDEX = 255

# One fixed palette for the whole course: class id -> RGB in [0, 1]. Background (0) is black,
# then 20 distinguishable colours (the PASCAL VOC colour map, so VOC masks look familiar).
# The ignore label is drawn white.


def _voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: bit-interleaved RGB, shape ``(n, 3)`` uint8."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


PALETTE = _voc_colormap(256).astype(np.float32) / 255.0
PALETTE[IGNORE_INDEX] = 1.0


def colorize(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class-id mask ``(H, W)`` -> RGB image ``(H, W, 3)`` float in [0, 1] with ``PALETTE``."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"colorize expects a (H, W) mask, got shape {tuple(mask.shape)}")
    return PALETTE[np.clip(mask, 0, 255).astype(np.int64)]


def _check_pair(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.ndim != 3 or mask.ndim != 2 or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            "expected image (C, H, W) and mask (H, W) of the same H, W; "
            f"got image {tuple(image.shape)} and mask {tuple(mask.shape)}"
        )


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]):
    """Resize image (bilinear) and mask (nearest) to ``size = (H, W)``."""
    _check_pair(image, mask)
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


def pad_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]):
    """Pad bottom/right up to ``size``: the image with 0, the mask with ``IGNORE_INDEX``."""
    _check_pair(image, mask)
    pad_h, pad_w = max(0, size[0] - image.shape[-2]), max(0, size[1] - image.shape[-1])
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
    mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    return image, mask


def hflip_pair(image: torch.Tensor, mask: torch.Tensor):
    """Mirror image and mask left-right together."""
    _check_pair(image, mask)
    return image.flip(-1), mask.flip(-1)


def random_crop_pair(image, mask, size: tuple[int, int], generator: torch.Generator | None = None):
    """The same random ``size`` crop of image and mask (padding first if they are smaller)."""
    image, mask = pad_pair(image, mask, size)
    h, w = image.shape[-2:]
    top = int(torch.randint(0, h - size[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size[1] + 1, (1,), generator=generator))
    return (
        image[:, top : top + size[0], left : left + size[1]],
        mask[top : top + size[0], left : left + size[1]],
    )
