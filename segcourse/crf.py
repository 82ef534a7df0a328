"""The fully connected CRF of notebook 01, as a tool for the notebooks after it.

Notebook 01 has students write ``crf_mean_field`` (and still grades their own); notebook 06
refines a network's predictions with the same model, so it arrives here as a tool (COURSE.md,
section 2), with the same arguments, the same defaults and the same result::

    q = crf_mean_field(logits, image, iters=5)                   # (C, H, W) marginals
    q = crf_mean_field(logits, images, iters=5, window=12)       # (N, C, H, W), a batch

Every pair of pixels ``i != j`` is connected by

    k(i, j) = w_appearance * exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))
            + w_smooth * exp(-|p_i - p_j|^2 / (2 theta_gamma^2))

(positions ``p`` = (row, col) in pixels, colours ``I``), with Potts labels, and mean field runs
``Q <- softmax(unary_logits + K Q)`` over the labels, all pixels in parallel, from
``Q = softmax(unary_logits)``.

``window=None`` builds the dense ``(HW, HW)`` kernel, exactly notebook 01's computation: fine
up to about 64 x 64 pixels (4,096 pixels, a 64 MiB kernel). ``window=r`` keeps only the pairs
whose row and column offsets are both at most ``r`` (the Gaussians are below ``exp(-4.5)`` of
their peak beyond three widths, so ``r = 3 * max(theta_alpha, theta_gamma)`` changes little)
and never builds the dense matrix: memory and time grow with ``HW (2r + 1)^2`` instead of
``(HW)^2``. With ``r >= max(H, W) - 1`` every pair is kept and the result is the dense one.
"""

from __future__ import annotations

import torch

__all__ = ["crf_mean_field", "pair_count"]


def pair_count(height: int, width: int) -> dict[str, int]:
    """How many pixel pairs a fully connected CRF on an ``height x width`` image sums over.

    ``unordered`` pairs ``{i, j}`` with ``i != j`` (the energy's ``sum_{i < j}``): ``N (N - 1) / 2``
    for ``N = height * width``; ``ordered`` ``(i, j)`` with ``i != j`` (the messages
    ``sum_{j != i}``): ``N (N - 1)``; ``matrix``: the ``N^2`` entries of the dense kernel,
    its zero diagonal included.

    >>> pair_count(64, 64)
    {'pixels': 4096, 'unordered': 8386560, 'ordered': 16773120, 'matrix': 16777216}
    """
    n = height * width
    return {"pixels": n, "unordered": n * (n - 1) // 2, "ordered": n * (n - 1), "matrix": n * n}


def crf_mean_field(unary_logits: torch.Tensor, image: torch.Tensor, iters: int,
                   theta_alpha: float = 8.0, theta_beta: float = 0.1, theta_gamma: float = 1.5,
                   w_appearance: float = 0.5, w_smooth: float = 0.5, *,
                   window: int | None = None) -> torch.Tensor:
    """Mean-field inference in a fully connected CRF (notebook 01's ``crf_mean_field``).

    Args:
        unary_logits: float ``(C, H, W)`` scores (e.g. a network's logits, = -unary energies),
            or a batch ``(N, C, H, W)``.
        image: float ``(3, H, W)`` (or ``(N, 3, H, W)``), same dtype and device; colours in the
            units of ``theta_beta`` (images in [0, 1] here).
        iters: int >= 0, the number of mean-field updates (0 returns the softmax of the logits).
        theta_alpha, theta_beta, theta_gamma: kernel widths (pixels, colour units, pixels).
        w_appearance, w_smooth: kernel weights. The defaults are notebook 01's.
        window: ``None`` for every pair (the dense kernel); an int ``r`` for the pairs within
            ``r`` rows and ``r`` columns of each other (see the module's docstring).

    Returns:
        The marginals ``Q``, same shape as ``unary_logits``: non-negative, summing to 1 over
        the label dimension.
    """
    batched = unary_logits.dim() == 4
    if not batched:
        unary_logits, image = unary_logits[None], image[None]
    if unary_logits.dim() != 4 or image.dim() != 4 or image.shape[1] != 3:
        raise ValueError("expected unary_logits (C, H, W) and image (3, H, W), or batches of them")
    if unary_logits.shape[0] != image.shape[0] or unary_logits.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"logits {tuple(unary_logits.shape)} and image {tuple(image.shape)} "
                         "differ in batch size or in height and width")
    params = dict(theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma,
                  w_appearance=w_appearance, w_smooth=w_smooth)
    height, width = unary_logits.shape[-2:]
    if window is None or window >= max(height, width) - 1 and height * width <= 4096:
        q = torch.stack([_dense(logits, picture, iters, **params)
                         for logits, picture in zip(unary_logits, image, strict=True)])
    else:  # a few images at a time: the per-offset weights take (2r + 1)^2 images' worth
        q = torch.cat([_windowed(unary_logits[i:i + _CHUNK], image[i:i + _CHUNK], iters, window, **params)
                       for i in range(0, len(unary_logits), _CHUNK)])
    return q if batched else q[0]


_CHUNK = 8


def _dense(unary_logits, image, iters, theta_alpha, theta_beta, theta_gamma, w_appearance,
           w_smooth):
    """Notebook 01's computation: the (N, N) kernel, then iters matrix products."""
    num_labels, height, width = unary_logits.shape
    rows = torch.arange(height, dtype=image.dtype, device=image.device)
    cols = torch.arange(width, dtype=image.dtype, device=image.device)
    yy, xx = torch.meshgrid(rows, cols, indexing="ij")
    position = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)  # (N, 2)
    colour = image.reshape(3, -1).T  # (N, 3)
    position_sq = ((position[:, None] - position[None]) ** 2).sum(-1)  # (N, N)
    colour_sq = ((colour[:, None] - colour[None]) ** 2).sum(-1)  # (N, N)
    kernel = w_appearance * torch.exp(-position_sq / (2 * theta_alpha**2)
                                      - colour_sq / (2 * theta_beta**2))
    kernel = kernel + w_smooth * torch.exp(-position_sq / (2 * theta_gamma**2))
    kernel.fill_diagonal_(0.0)
    logits = unary_logits.reshape(num_labels, -1)  # (C, N)
    q = logits.softmax(dim=0)
    for _ in range(iters):
        q = (logits + q @ kernel).softmax(dim=0)  # K is symmetric: (Q K)[l, i] = sum_j K_ij Q_j(l)
    return q.reshape(num_labels, height, width)


def _windowed(unary_logits, images, iters, radius, theta_alpha, theta_beta, theta_gamma,
              w_appearance, w_smooth):
    """The same updates with the pairs at row and column offsets up to ``radius``, one offset
    at a time (no (HW, HW) matrix). Pixels outside the image have Q = 0: no message."""
    n, num_labels, height, width = unary_logits.shape
    radius = int(min(radius, max(height, width) - 1))
    r = radius
    padded_images = torch.nn.functional.pad(images, (r, r, r, r))  # (N, 3, H + 2r, W + 2r)
    offsets, weights = [], []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue  # no message from a pixel to itself
            distance_sq = float(dy * dy + dx * dx)
            appearance = w_appearance * torch.exp(torch.tensor(-distance_sq / (2 * theta_alpha**2)))
            smooth = w_smooth * torch.exp(torch.tensor(-distance_sq / (2 * theta_gamma**2)))
            if float(appearance) == 0.0 and float(smooth) == 0.0:
                continue
            shifted = padded_images[..., r + dy:r + dy + height, r + dx:r + dx + width]
            colour_sq = ((images - shifted) ** 2).sum(1, keepdim=True)  # (N, 1, H, W)
            weight = appearance.to(images) * torch.exp(-colour_sq / (2 * theta_beta**2)) + smooth.to(images)
            offsets.append((dy, dx))
            weights.append(weight)
    q = unary_logits.softmax(dim=1)
    for _ in range(iters):
        padded_q = torch.nn.functional.pad(q, (r, r, r, r))  # zeros outside the image
        message = torch.zeros_like(q)
        for (dy, dx), weight in zip(offsets, weights, strict=True):
            message.addcmul_(weight, padded_q[..., r + dy:r + dy + height, r + dx:r + dx + width])
        q = (unary_logits + message).softmax(dim=1)
    return q
