"""Notebook 01's test cells: independent correct implementations earn every point, and each
common mistake fails a test cell with a message that says what differs.

The test cells (visible and hidden) are run by ``checks.run_test_cells`` against the references
recorded in ``autograder/references/01_clustering`` (``segcourse references 01_clustering``).
The correct implementations below are written differently from the notebook's solutions: NumPy
and SciPy in float64, loops instead of broadcasting, another eigensolver, another max-flow.
"""

from __future__ import annotations

import itertools
import math
import sys
import types
from pathlib import Path

import maxflow
import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow
from scipy.spatial.distance import cdist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `checks`, however pytest is run

import checks  # noqa: E402
from checks import run_test_cells  # noqa: E402

from segcourse import grading, verify  # noqa: E402

NOTEBOOK = "01_clustering"


def _numpy(tensor):
    return tensor.detach().cpu().double().numpy()


def _like(array, reference, dtype=None):
    """A NumPy result as a tensor with the reference tensor's dtype (or ``dtype``) and device."""
    return torch.as_tensor(np.asarray(array)).to(dtype or reference.dtype).to(reference.device)


# --------------------------------------------------------------------------------------------
# pixel_features
# --------------------------------------------------------------------------------------------


def numpy_pixel_features(image, position_weight):
    _, height, width = image.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = max(height, width)
    columns = [*_numpy(image).reshape(3, -1), position_weight * rows.ravel() / scale,
               position_weight * cols.ravel() / scale]
    return _like(np.stack(columns, axis=1), image)


def pixel_features_per_side(image, position_weight):
    """Mistake: row / H and col / W (stretches non-square images)."""
    _, height, width = image.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    columns = [*_numpy(image).reshape(3, -1), position_weight * rows.ravel() / height,
               position_weight * cols.ravel() / width]
    return _like(np.stack(columns, axis=1), image)


def pixel_features_xy(image, position_weight):
    """Mistake: (x, y) = (col, row) instead of (row, col)."""
    features = numpy_pixel_features(image, position_weight)
    return features[:, [0, 1, 2, 4, 3]]


def pixel_features_unweighted(image, position_weight):
    """Mistake: the position weight is ignored."""
    return numpy_pixel_features(image, 1.0)


def pixel_features_pixel_centres(image, position_weight):
    """Mistake: positions of pixel centres, (row + 0.5, col + 0.5) / S."""
    _, height, width = image.shape
    features = numpy_pixel_features(image, position_weight)
    features[:, 3:] += position_weight * 0.5 / max(height, width)
    return features


def pixel_features_minus_one(image, position_weight):
    """Mistake: divides by S - 1 (positions from 0 to 1 inclusive, like linspace)."""
    _, height, width = image.shape
    scale = max(height, width)
    features = numpy_pixel_features(image, position_weight)
    features[:, 3:] *= scale / max(scale - 1, 1)
    return features


# --------------------------------------------------------------------------------------------
# kmeans
# --------------------------------------------------------------------------------------------


def _nearest(points, centers):
    distances = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    return distances.argmin(axis=1)  # NumPy's argmin also returns the first minimum


def numpy_kmeans(x, init_centers, iters):
    """Float64 NumPy, a loop over clusters in the update step."""
    points, centers = _numpy(x), _numpy(init_centers).copy()
    for _ in range(iters):
        labels = _nearest(points, centers)
        for j in range(len(centers)):
            members = points[labels == j]
            if len(members):
                centers[j] = members.mean(axis=0)
    return _like(_nearest(points, centers), x, torch.int64), _like(centers, x)


def matmul_kmeans(x, init_centers, iters):
    """Float32 torch, distances by ||x||^2 - 2 x.c + ||c||^2, update by a one-hot matmul."""
    centers = init_centers.clone()

    def assign(centers):
        distances = (x * x).sum(1, keepdim=True) - 2 * x @ centers.T + (centers * centers).sum(1)
        return distances.argmin(1)

    for _ in range(iters):
        one_hot = torch.nn.functional.one_hot(assign(centers), len(centers)).to(x.dtype)  # (N, K)
        counts = one_hot.sum(0)
        means = (one_hot.T @ x) / counts.clamp(min=1)[:, None]
        centers = torch.where(counts[:, None] > 0, means, centers)
    return assign(centers), centers


def cdist_kmeans(x, init_centers, iters):
    """Float32 torch.cdist (Euclidean, not squared: same argmin), a loop over clusters."""
    centers = init_centers.clone()
    for _ in range(iters):
        labels = torch.cdist(x, centers).argmin(1)
        for j in range(len(centers)):
            if (labels == j).any():
                centers[j] = x[labels == j].mean(0)
    return torch.cdist(x, centers).argmin(1), centers


def kmeans_no_update(x, init_centers, iters):
    """Mistake: the centres never move."""
    return numpy_kmeans(x, init_centers, 0)


def kmeans_stale_labels(x, init_centers, iters):
    """Mistake: returns the labels of the last assignment step, before the last update."""
    points, centers = _numpy(x), _numpy(init_centers).copy()
    labels = _nearest(points, centers)
    for _ in range(iters):
        labels = _nearest(points, centers)
        for j in range(len(centers)):
            if (labels == j).any():
                centers[j] = points[labels == j].mean(axis=0)
    return _like(labels, x, torch.int64), _like(centers, x)


def kmeans_empty_nan(x, init_centers, iters):
    """Mistake: an empty cluster's centre becomes 0/0 = NaN (or 0)."""
    centers = init_centers.clone()
    for _ in range(iters):
        labels = ((x[:, None] - centers[None]) ** 2).sum(2).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(centers)).to(x.dtype)
        centers = sums / counts[:, None]
    return ((x[:, None] - centers[None]) ** 2).sum(2).argmin(1), centers


def kmeans_empty_zero(x, init_centers, iters):
    """Mistake: an empty cluster's centre becomes 0 (sums / counts.clamp(min=1))."""
    centers = init_centers.clone()
    for _ in range(iters):
        labels = ((x[:, None] - centers[None]) ** 2).sum(2).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(centers)).to(x.dtype)
        centers = sums / counts.clamp(min=1)[:, None]
    return ((x[:, None] - centers[None]) ** 2).sum(2).argmin(1), centers


def kmeans_empty_reseeded(x, init_centers, iters):
    """Mistake: an empty cluster restarts at the point farthest from its centre (scikit-learn's
    rule, not this docstring's)."""
    points, centers = _numpy(x), _numpy(init_centers).copy()
    for _ in range(iters):
        labels = _nearest(points, centers)
        for j in range(len(centers)):
            members = points[labels == j]
            if len(members):
                centers[j] = members.mean(axis=0)
            else:
                distances = ((points - centers[labels]) ** 2).sum(axis=1)
                centers[j] = points[distances.argmax()]
    return _like(_nearest(points, centers), x, torch.int64), _like(centers, x)


def kmeans_last_tie(x, init_centers, iters):
    """Mistake: ties go to the highest index."""
    labels, centers = numpy_kmeans(x, init_centers, iters)
    flipped = numpy_kmeans(x, init_centers.flip(0), iters)
    return (len(init_centers) - 1 - flipped[0]), flipped[1].flip(0)


# --------------------------------------------------------------------------------------------
# affinity_matrix
# --------------------------------------------------------------------------------------------


def scipy_affinity_matrix(features, sigma):
    squared = cdist(_numpy(features), _numpy(features), "sqeuclidean")
    return _like(np.exp(-squared / (2 * sigma**2)), features)


def cdist_affinity_matrix(features, sigma):
    """Float32 torch.cdist, squared afterwards."""
    return torch.exp(-torch.cdist(features, features) ** 2 / (2 * sigma**2))


def affinity_sigma_squared(features, sigma):
    """Mistake: divides by sigma^2 instead of 2 sigma^2."""
    squared = cdist(_numpy(features), _numpy(features), "sqeuclidean")
    return _like(np.exp(-squared / sigma**2), features)


def affinity_not_squared(features, sigma):
    """Mistake: the distance instead of the squared distance."""
    distance = cdist(_numpy(features), _numpy(features))
    return _like(np.exp(-distance / (2 * sigma**2)), features)


def affinity_two_sigma(features, sigma):
    """Mistake: divides by 2 sigma instead of 2 sigma^2."""
    squared = cdist(_numpy(features), _numpy(features), "sqeuclidean")
    return _like(np.exp(-squared / (2 * sigma)), features)


def affinity_zero_diagonal(features, sigma):
    """Mistake: zeroes the diagonal (the docstring keeps W_ii = 1)."""
    W = scipy_affinity_matrix(features, sigma)
    return W - torch.diag(torch.diag(W))


# --------------------------------------------------------------------------------------------
# fiedler_vector and ncut_bipartition
# --------------------------------------------------------------------------------------------


def _generalised(W):
    """SciPy's generalised symmetric eigensolver on (L, D): eigenvectors with f^T D f = 1."""
    weights = _numpy(W)
    degree = np.diag(weights.sum(axis=1))
    return scipy.linalg.eigh(degree - weights, degree)


def scipy_fiedler_vector(W):
    return _like(_generalised(W)[1][:, 1], W)


def random_walk_fiedler_vector(W):
    """Eigenvector of D^-1 W with the second largest eigenvalue (same f), D-normalised."""
    weights = _numpy(W)
    degree = weights.sum(axis=1)
    values, vectors = np.linalg.eig(weights / degree[:, None])
    f = np.real(vectors[:, np.argsort(-np.real(values))[1]])
    return _like(f / np.sqrt(f @ (degree * f)), W)


def float32_fiedler_vector(W):
    """The symmetric normalised form in float32 (the notebook advises float64)."""
    inv_sqrt = W.sum(1).rsqrt()
    normalised = torch.eye(len(W), dtype=W.dtype) - inv_sqrt[:, None] * W * inv_sqrt[None]
    return inv_sqrt * torch.linalg.eigh(normalised)[1][:, 1]


def fiedler_smallest(W):
    """Mistake: the first eigenvector (the constant one)."""
    return _like(_generalised(W)[1][:, 0], W)


def fiedler_not_mapped_back(W):
    """Mistake: returns v, the eigenvector of the symmetric normalised matrix, not D^-1/2 v."""
    weights = _numpy(W)
    inv_sqrt = 1 / np.sqrt(weights.sum(axis=1))
    _, vectors = np.linalg.eigh(np.eye(len(weights)) - inv_sqrt[:, None] * weights * inv_sqrt)
    return _like(vectors[:, 1], W)


def fiedler_unnormalised_laplacian(W):
    """Mistake: L f = lambda f (ratio cut) instead of L f = lambda D f, scaled to f^T D f = 1."""
    weights = _numpy(W)
    degree = weights.sum(axis=1)
    f = np.linalg.eigh(np.diag(degree) - weights)[1][:, 1]
    return _like(f / np.sqrt(f @ (degree * f)), W)


def fiedler_unit_length(W):
    """Mistake: the right direction, normalised to |f| = 1 instead of f^T D f = 1."""
    f = _generalised(W)[1][:, 1]
    return _like(f / np.linalg.norm(f), W)


def fiedler_wrong_end(W):
    """Mistake: eigh of D^-1/2 W D^-1/2 (no "I -") and its second *smallest* eigenvalue; that
    matrix's useful end is the largest, so this takes the wrong end of the spectrum."""
    weights = _numpy(W)
    inv_sqrt = 1 / np.sqrt(weights.sum(axis=1))
    _, vectors = np.linalg.eigh(inv_sqrt[:, None] * weights * inv_sqrt)
    f = inv_sqrt * vectors[:, 1]
    return _like(f / np.sqrt(f @ (weights.sum(axis=1) * f)), W)


def scipy_ncut_bipartition(W):
    return _like(_generalised(W)[1][:, 1] > 0, W, torch.int64)


def negated_ncut_bipartition(W):
    """The same split with the other sign convention (label 1 where f < 0)."""
    f = _generalised(W)[1][:, 1]
    return _like(f < 0, W, torch.int64)


def ncut_smallest(W):
    """Mistake: thresholds the first (constant) eigenvector."""
    return _like(_generalised(W)[1][:, 0] > 0, W, torch.int64)


def ncut_third(W):
    """Mistake: thresholds the third eigenvector."""
    return _like(_generalised(W)[1][:, 2] > 0, W, torch.int64)


def ncut_median(W):
    """Mistake: splits at the median of f (two equal halves) instead of at 0."""
    f = _generalised(W)[1][:, 1]
    return _like(f > np.median(f), W, torch.int64)


def ncut_ratio_cut(W):
    """Mistake: the unnormalised Laplacian, L f = lambda f (ratio cut), thresholded at 0."""
    weights = _numpy(W)
    f = np.linalg.eigh(np.diag(weights.sum(axis=1)) - weights)[1][:, 1]
    return _like(f > 0, W, torch.int64)


def ncut_wrong_end(W):
    """Mistake: the sign of fiedler_wrong_end's vector."""
    return (fiedler_wrong_end(W) > 0).long()


# --------------------------------------------------------------------------------------------
# graph_cut_energy
# --------------------------------------------------------------------------------------------


def loop_graph_cut_energy(labels, unary, lam):
    """Python loops over pixels and their right and lower neighbours."""
    lab, costs = labels.cpu().numpy(), _numpy(unary)
    height, width = lab.shape
    energy = 0.0
    for i, j in itertools.product(range(height), range(width)):
        energy += costs[lab[i, j], i, j]
        if i + 1 < height:
            energy += lam * (lab[i, j] != lab[i + 1, j])
        if j + 1 < width:
            energy += lam * (lab[i, j] != lab[i, j + 1])
    return _like(np.array(energy), unary)


def energy_pairs_twice(labels, unary, lam):
    """Mistake: every neighbour pair counted from both sides."""
    data = loop_graph_cut_energy(labels, unary, 0.0)
    return data + 2 * (loop_graph_cut_energy(labels, unary, lam) - data)


def energy_eight_neighbours(labels, unary, lam):
    """Mistake: diagonal neighbours count too."""
    lab = labels.cpu().numpy()
    diagonal = (lab[1:, 1:] != lab[:-1, :-1]).sum() + (lab[1:, :-1] != lab[:-1, 1:]).sum()
    return loop_graph_cut_energy(labels, unary, lam) + lam * float(diagonal)


def energy_swapped_unary(labels, unary, lam):
    """Mistake: unary[0] taken as the cost of label 1."""
    return loop_graph_cut_energy(labels, unary.flip(0), lam)


def energy_wraparound(labels, unary, lam):
    """Mistake: torch.roll compares the last row (column) with the first one as well."""
    data = loop_graph_cut_energy(labels, unary, 0.0)
    pairs = ((labels != labels.roll(1, 0)).sum() + (labels != labels.roll(1, 1)).sum())
    return data + lam * pairs.to(unary.dtype)


def energy_no_lambda(labels, unary, lam):
    """Mistake: the Potts weight is ignored (every differing pair costs 1)."""
    return loop_graph_cut_energy(labels, unary, 1.0)


# --------------------------------------------------------------------------------------------
# graph_cut_segment
# --------------------------------------------------------------------------------------------


def scipy_graph_cut_segment(unary, lam):
    """Min cut with SciPy's integer max-flow (capacities scaled by 1e6), the source side by BFS."""
    costs = _numpy(unary)
    costs = costs - costs.min(axis=0, keepdims=True)
    height, width = costs.shape[1:]
    n = height * width
    source, sink = n, n + 1
    scale = 1e6
    rows, cols, caps = [], [], []

    def edge(a, b, capacity):
        rows.append(a)
        cols.append(b)
        caps.append(int(round(capacity * scale)))

    index = np.arange(n).reshape(height, width)
    for i, j in itertools.product(range(height), range(width)):
        p = index[i, j]
        edge(source, p, costs[1, i, j])  # cut when p is on the sink side (label 1)
        edge(p, sink, costs[0, i, j])
        for di, dj in ((1, 0), (0, 1)):
            if i + di < height and j + dj < width:
                edge(p, index[i + di, j + dj], lam)
                edge(index[i + di, j + dj], p, lam)
    graph = csr_matrix((caps, (rows, cols)), shape=(n + 2, n + 2), dtype=np.int64)
    flow = maximum_flow(graph, source, sink).flow
    residual = graph - flow
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reachable = breadth_first_order(residual, source, directed=True, return_predecessors=False)
    labels = np.ones(n, dtype=np.int64)
    labels[reachable[reachable < n]] = 0
    return _like(labels.reshape(height, width), unary, torch.int64)


def swapped_maxflow_graph_cut_segment(unary, lam):
    """PyMaxflow with the roles of source and sink exchanged (label 1 = source side)."""
    costs = _numpy(unary)
    costs = costs - costs.min(axis=0, keepdims=True)
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(costs.shape[1:])
    graph.add_grid_edges(nodes, float(lam))
    graph.add_grid_tedges(nodes, costs[0], costs[1])
    graph.maxflow()
    return _like(~graph.get_grid_segments(nodes), unary, torch.int64)


def segment_swapped_labels(unary, lam):
    """Mistake: source and sink capacities mixed up, so the labels come out inverted."""
    return 1 - swapped_maxflow_graph_cut_segment(unary, lam)


def segment_ignores_lambda(unary, lam):
    """Mistake: the unary argmin, whatever lam."""
    return unary.argmin(0)


def segment_eight_neighbours(unary, lam):
    """Mistake: diagonal edges as well (PyMaxflow's structure with all 8 neighbours)."""
    costs = _numpy(unary)
    costs = costs - costs.min(axis=0, keepdims=True)
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(costs.shape[1:])
    structure = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])
    graph.add_grid_edges(nodes, float(lam), structure=structure, symmetric=False)
    graph.add_grid_tedges(nodes, costs[1], costs[0])
    graph.maxflow()
    return _like(graph.get_grid_segments(nodes), unary, torch.int64)


def segment_lambda_half(unary, lam):
    """Mistake: lam / 2 per direction, thinking that the two directions add up."""
    return swapped_maxflow_graph_cut_segment(unary, lam / 2)


def segment_lambda_twice(unary, lam):
    """Mistake: 2 * lam on every edge (e.g. adding each grid edge twice)."""
    return swapped_maxflow_graph_cut_segment(unary, 2 * lam)


# --------------------------------------------------------------------------------------------
# crf_mean_field
# --------------------------------------------------------------------------------------------


def numpy_crf_mean_field(unary_logits, image, iters, theta_alpha=8.0, theta_beta=0.1,
                         theta_gamma=1.5, w_appearance=0.5, w_smooth=0.5, *, include_image=True,
                         include_self=False, sign=1.0, row_normalised=False, normalise_q=True,
                         softmax_axis=0):
    """Float64 NumPy; the keyword-only flags make the common mistakes."""
    logits = _numpy(unary_logits).reshape(unary_logits.shape[0], -1)  # (C, N)
    height, width = unary_logits.shape[1:]
    rows, cols = np.mgrid[0:height, 0:width]
    position = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
    colour = _numpy(image).reshape(3, -1).T
    position_sq = cdist(position, position, "sqeuclidean")
    colour_sq = cdist(colour, colour, "sqeuclidean") if include_image else 0.0
    kernel = (w_appearance * np.exp(-position_sq / (2 * theta_alpha**2)
                                    - colour_sq / (2 * theta_beta**2))
              + w_smooth * np.exp(-position_sq / (2 * theta_gamma**2)))
    if not include_self:
        np.fill_diagonal(kernel, 0.0)
    if row_normalised:
        kernel = kernel / kernel.sum(axis=1, keepdims=True)

    def softmax(scores):
        scores = scores - scores.max(axis=softmax_axis, keepdims=True)
        return np.exp(scores) / np.exp(scores).sum(axis=softmax_axis, keepdims=True)

    q = softmax(logits)
    for _ in range(iters):
        with np.errstate(over="ignore", invalid="ignore"):  # unnormalised Q may overflow
            scores = logits + sign * (kernel @ q.T).T
            q = softmax(scores) if normalise_q else np.exp(scores)
    return _like(q.reshape(unary_logits.shape), unary_logits)


def torch_crf_mean_field(unary_logits, image, iters, theta_alpha=8.0, theta_beta=0.1,
                         theta_gamma=1.5, w_appearance=0.5, w_smooth=0.5):
    """Float32 torch: cdist, the appearance kernel as a product of two Gaussians, K Q^T."""
    num_labels, height, width = unary_logits.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    position = torch.stack([rows.flatten(), cols.flatten()], 1).to(image.dtype)
    colour = image.reshape(3, -1).T
    position_sq, colour_sq = torch.cdist(position, position) ** 2, torch.cdist(colour, colour) ** 2
    kernel = (w_appearance * torch.exp(-position_sq / (2 * theta_alpha**2))
              * torch.exp(-colour_sq / (2 * theta_beta**2))
              + w_smooth * torch.exp(-position_sq / (2 * theta_gamma**2)))
    kernel = kernel * (1 - torch.eye(height * width, dtype=kernel.dtype))
    logits = unary_logits.reshape(num_labels, -1)
    q = logits.softmax(0)
    for _ in range(iters):
        q = (logits + (kernel @ q.T).T).softmax(0)
    return q.reshape(unary_logits.shape)


def crf_ignores_image(*args, **kwargs):
    """Mistake: the appearance kernel without its colour term."""
    return numpy_crf_mean_field(*args, **kwargs, include_image=False)


def crf_keeps_self(*args, **kwargs):
    """Mistake: the kernel's diagonal is kept (a pixel sends a message to itself)."""
    return numpy_crf_mean_field(*args, **kwargs, include_self=True)


def crf_subtracts_messages(*args, **kwargs):
    """Mistake: logits - K Q (the Potts sign the wrong way round)."""
    return numpy_crf_mean_field(*args, **kwargs, sign=-1.0)


def crf_theta_not_doubled(unary_logits, image, iters, theta_alpha=8.0, theta_beta=0.1,
                          theta_gamma=1.5, w_appearance=0.5, w_smooth=0.5):
    """Mistake: exp(-d^2 / theta^2) instead of exp(-d^2 / (2 theta^2)) in every kernel."""
    root = np.sqrt(0.5)
    return numpy_crf_mean_field(unary_logits, image, iters, theta_alpha * root, theta_beta * root,
                                theta_gamma * root, w_appearance, w_smooth)


def crf_normalised_messages(*args, **kwargs):
    """Mistake: every pixel's kernel row divided by its sum (averaged, not summed, messages)."""
    return numpy_crf_mean_field(*args, **kwargs, row_normalised=True)


def crf_unnormalised_q(*args, **kwargs):
    """Mistake: Q <- exp(logits + K Q) after the start, never normalised over the labels."""
    return numpy_crf_mean_field(*args, **kwargs, normalise_q=False)


def crf_softmax_over_pixels(*args, **kwargs):
    """Mistake: the softmax over the pixels (dim 1 of (C, N)) instead of over the labels."""
    return numpy_crf_mean_field(*args, **kwargs, softmax_axis=1)


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------

CORRECT = [
    ("pixel_features", numpy_pixel_features),
    ("kmeans", numpy_kmeans),
    ("kmeans", matmul_kmeans),
    ("kmeans", cdist_kmeans),
    ("affinity_matrix", scipy_affinity_matrix),
    ("affinity_matrix", cdist_affinity_matrix),
    ("fiedler_vector", scipy_fiedler_vector),
    ("fiedler_vector", random_walk_fiedler_vector),
    ("fiedler_vector", float32_fiedler_vector),
    ("ncut_bipartition", scipy_ncut_bipartition),
    ("ncut_bipartition", negated_ncut_bipartition),
    ("graph_cut_energy", loop_graph_cut_energy),
    ("graph_cut_segment", scipy_graph_cut_segment),
    ("graph_cut_segment", swapped_maxflow_graph_cut_segment),
    ("crf_mean_field", numpy_crf_mean_field),
    ("crf_mean_field", torch_crf_mean_field),
]

MISTAKES = [
    ("pixel_features", pixel_features_per_side),
    ("pixel_features", pixel_features_xy),
    ("pixel_features", pixel_features_unweighted),
    ("pixel_features", pixel_features_pixel_centres),
    ("pixel_features", pixel_features_minus_one),
    ("kmeans", kmeans_no_update),
    ("kmeans", kmeans_stale_labels),
    ("kmeans", kmeans_empty_nan),
    ("kmeans", kmeans_empty_zero),
    ("kmeans", kmeans_empty_reseeded),
    ("kmeans", kmeans_last_tie),
    ("affinity_matrix", affinity_sigma_squared),
    ("affinity_matrix", affinity_two_sigma),
    ("affinity_matrix", affinity_not_squared),
    ("affinity_matrix", affinity_zero_diagonal),
    ("fiedler_vector", fiedler_smallest),
    ("fiedler_vector", fiedler_not_mapped_back),
    ("fiedler_vector", fiedler_unnormalised_laplacian),
    ("fiedler_vector", fiedler_unit_length),
    ("fiedler_vector", fiedler_wrong_end),
    ("ncut_bipartition", ncut_smallest),
    ("ncut_bipartition", ncut_third),
    ("ncut_bipartition", ncut_median),
    ("ncut_bipartition", ncut_ratio_cut),
    ("ncut_bipartition", ncut_wrong_end),
    ("graph_cut_energy", energy_pairs_twice),
    ("graph_cut_energy", energy_eight_neighbours),
    ("graph_cut_energy", energy_swapped_unary),
    ("graph_cut_energy", energy_no_lambda),
    ("graph_cut_energy", energy_wraparound),
    ("graph_cut_segment", segment_swapped_labels),
    ("graph_cut_segment", segment_ignores_lambda),
    ("graph_cut_segment", segment_lambda_twice),
    ("graph_cut_segment", segment_lambda_half),
    ("graph_cut_segment", segment_eight_neighbours),
    ("crf_mean_field", crf_ignores_image),
    ("crf_mean_field", crf_keeps_self),
    ("crf_mean_field", crf_subtracts_messages),
    ("crf_mean_field", crf_theta_not_doubled),
    ("crf_mean_field", crf_normalised_messages),
    ("crf_mean_field", crf_unnormalised_q),
    ("crf_mean_field", crf_softmax_over_pixels),
]



@pytest.mark.parametrize(("function", "implementation"), CORRECT,
                         ids=[impl.__name__ for _, impl in CORRECT])
def test_independent_implementations_pass_every_test_cell(function, implementation):
    outcome = run_test_cells(NOTEBOOK, function, implementation)
    assert set(outcome) == {f"test_{function}", f"hidden_{function}"}
    failures = {cell: message for cell, message in outcome.items() if message}
    assert not failures, failures


@pytest.mark.parametrize(("function", "implementation"), MISTAKES,
                         ids=[impl.__name__ for _, impl in MISTAKES])
def test_common_mistakes_fail(function, implementation):
    outcome = run_test_cells(NOTEBOOK, function, implementation)
    assert any(outcome.values()), f"{implementation.__name__} passed every test cell of {function}"
    # The hidden tests carry most of the points: they must catch every mistake on their own.
    assert outcome[f"hidden_{function}"], f"the hidden tests miss {implementation.__name__}"


def test_graph_cut_references_are_unique_minima():
    """The graph-cut cases' minimisers are unique: a brute force over all labellings of the
    smallest case has a clear gap between the best and the second-best energy."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        unary = torch.rand(2, 3, 4, generator=generator)
        lam = float(torch.rand(1, generator=generator))
        energies = sorted(
            float(loop_graph_cut_energy(torch.tensor(bits).reshape(3, 4), unary, lam))
            for bits in itertools.product([0, 1], repeat=12)
        )
        best = scipy_graph_cut_segment(unary, lam)
        assert abs(float(loop_graph_cut_energy(best, unary, lam)) - energies[0]) < 1e-6
        assert torch.equal(best, swapped_maxflow_graph_cut_segment(unary, lam))


# --------------------------------------------------------------------------------------------
# Margins (issue 16, item 8): on any device, a mistake fails and a right answer passes
# --------------------------------------------------------------------------------------------
#
# A GPU grader compares a student's outputs with CPU references under the cross-device
# tolerance (segcourse.verify.tolerance_for: rtol 1e-2, atol 1e-3 times max(1, max|expected|)).
# Each mistake must move some hidden case's output more than ten times that far; label outputs
# (compared exactly) must have one right answer that float32 round-off cannot flip: no near-ties
# in k-means, no Fiedler entry near 0, a strictly unique minimum cut.

MARGIN = 10.0


def _recorded_checks(function: str) -> dict:
    """check id -> (cases, compare, tolerance override) of ``function``'s test cells, read by
    running the cells with ``grading.check`` replaced by a recorder (and a correct function, so
    that the visible cells' own asserts pass)."""
    correct = next(implementation for name, implementation in CORRECT if name == function)
    recorded = {}

    def record(check_id, fn, cases, *, compare="close", tolerance=None, seed=0, device=None):
        recorded[check_id] = (list(cases), compare, dict(tolerance or {}))

    for grade_id, source in checks.test_cells(NOTEBOOK, function).items():
        namespace = checks.setup_namespace(NOTEBOOK)
        proxy = types.SimpleNamespace(**{name: getattr(grading, name) for name in dir(grading)
                                         if not name.startswith("__")})
        proxy.check = record
        namespace["grading"], namespace[function] = proxy, correct
        exec(compile(source, f"{NOTEBOOK}:{grade_id}", "exec"), namespace)
    return recorded


_RECORDED: dict = {}


def recorded_checks(function: str) -> dict:
    if function not in _RECORDED:
        _RECORDED[function] = _recorded_checks(function)
    return _RECORDED[function]


def distance(got, expected, mode: str, tol) -> float:
    """How far ``got`` is from ``expected`` in units of the tolerance ``tol`` (above 1: fails).
    Any difference in an exact or partition comparison, a shape, dtype or NaN mismatch: inf."""
    if isinstance(expected, list):
        return max(distance(g, e, mode, tol) for g, e in zip(got, expected, strict=True))
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != expected.dtype:
        return math.inf
    if mode == "partition":
        return 0.0 if verify.compare(got, expected, "partition") is None else math.inf
    if mode == "exact" or not expected.is_floating_point():
        return math.inf if bool((got != expected).any()) else 0.0
    g, e = got.double(), expected.double()
    if mode == "sign" and float((g + e).abs().sum()) < float((g - e).abs().sum()):
        g = -g
    if bool((torch.isnan(g) != torch.isnan(e)).any()):
        return math.inf
    allowed = tol.atol * max(1.0, float(e.abs().max())) + tol.rtol * e.abs()
    return float(((g - e).abs().nan_to_num(posinf=math.inf) / allowed).max())


def hidden_distances(function: str, implementation) -> list[float]:
    """The distance of ``implementation``'s output from the reference, case by case, for the
    hidden check of ``function``, under the cross-device tolerance."""
    check_id = f"{NOTEBOOK}.{function}.hidden"
    cases, mode, _ = recorded_checks(function)[check_id]
    reference, entry = verify.load_reference(check_id, grading.references_dir())
    assert reference["inputs_sha256"] == grading._fingerprint(cases), f"stale reference {check_id}"
    cross_device = verify.tolerance_for("cpu", "cuda:0 (any GPU)", entry.get("tolerance"))
    assert cross_device.rtol >= 1e-2 and cross_device.atol >= 1e-3
    distances = []
    for case, expected in zip(cases, reference["outputs"], strict=True):
        torch.manual_seed(0)
        try:
            got = grading._to_plain(implementation(**{k: v.clone() if isinstance(v, torch.Tensor)
                                                      else v for k, v in case.items()}))
        except Exception:  # noqa: BLE001 (a crash fails the check on any device)
            got = None
        distances.append(distance(got, expected, mode, cross_device))
    return distances


@pytest.mark.parametrize(("function", "implementation"), MISTAKES,
                         ids=[impl.__name__ for _, impl in MISTAKES])
def test_every_mistake_is_far_beyond_the_cross_device_tolerance(function, implementation):
    distances = hidden_distances(function, implementation)
    assert max(distances) > MARGIN, (
        f"{implementation.__name__}: the hidden cases move by at most {max(distances):.3g} "
        f"cross-device tolerances ({[f'{d:.3g}' for d in distances]}), not more than {MARGIN}")


@pytest.mark.parametrize(("function", "implementation"), CORRECT,
                         ids=[impl.__name__ for _, impl in CORRECT])
def test_correct_implementations_are_well_inside_the_cross_device_tolerance(function,
                                                                            implementation):
    distances = hidden_distances(function, implementation)
    assert max(distances) < 0.1, (implementation.__name__, distances)


def _kmeans_assignment_gaps(x, init_centers, iters):
    """For every assignment step of Lloyd's algorithm (float64): the number of exact ties and the
    smallest non-zero gap between a point's nearest and second-nearest squared distance."""
    points, centers = _numpy(x), _numpy(init_centers).copy()
    ties, smallest = 0, math.inf
    for step in range(iters + 1):
        distances = ((points[:, None] - centers[None]) ** 2).sum(axis=2)
        if len(centers) > 1:
            ordered = np.sort(distances, axis=1)
            gaps = ordered[:, 1] - ordered[:, 0]
            ties += int((gaps == 0).sum())
            if (gaps > 0).any():
                smallest = min(smallest, float(gaps[gaps > 0].min()))
        if step == iters:
            break
        labels = distances.argmin(axis=1)
        for j in range(len(centers)):
            if (labels == j).any():
                centers[j] = points[labels == j].mean(axis=0)
    return ties, smallest


def _exactly_representable(tensor) -> bool:
    """Small integers: squared distances between them are exact in any float arithmetic."""
    return bool((tensor == tensor.round()).all() and tensor.abs().max() <= 1024)


def test_kmeans_cases_have_one_right_answer():
    """No near-ties: every assignment gap is at least 1e-3 of the squared scale of the points
    (10^4 float32 round-offs), except the deliberate exact ties of integer-valued cases, which
    every arithmetic resolves alike (and the docstring's tie rule decides)."""
    for check_id, (cases, _, _) in recorded_checks("kmeans").items():
        for number, case in enumerate(cases, start=1):
            ties, smallest = _kmeans_assignment_gaps(case["x"], case["init_centers"],
                                                     case["iters"])
            where = f"{check_id} case {number}"
            if ties:
                assert _exactly_representable(case["x"]), f"{where}: {ties} ties on real values"
                assert _exactly_representable(case["init_centers"]), where
            scale = max(1.0, float(case["x"].abs().max()) ** 2)
            assert smallest >= 1e-3 * scale, f"{where}: a near-tie, gap {smallest:.3g}"


def test_ncut_and_fiedler_cases_have_one_right_answer():
    """The second eigenvalue is simple (far from the first and the third), so the Fiedler vector
    is unique up to sign; for the partition, no entry of it is near 0."""
    for function in ("fiedler_vector", "ncut_bipartition"):
        for check_id, (cases, _, _) in recorded_checks(function).items():
            for number, case in enumerate(cases, start=1):
                values, vectors = _generalised(case["W"])
                where = f"{check_id} case {number}"
                assert values[1] - values[0] > 1e-4 and values[2] - values[1] > 0.1, (
                    where, values[:3])
                f = np.abs(vectors[:, 1])
                if function == "ncut_bipartition":
                    assert f.min() > 1e-2 * f.max(), f"{where}: min |f| / max |f| = {f.min() / f.max():.3g}"


def _forced_flip_gap(unary, lam) -> float:
    """min over pixels p of (the least energy with p's label flipped) - (the least energy): the
    minimiser is unique exactly when this is > 0 (another labelling differs at some p)."""
    costs = _numpy(unary)
    costs = costs - costs.min(axis=0, keepdims=True)
    height, width = costs.shape[1:]

    def least_energy(forced=None):
        graph = maxflow.Graph[float]()
        nodes = graph.add_grid_nodes((height, width))
        graph.add_grid_edges(nodes, float(lam))
        source, sink = costs[1].copy(), costs[0].copy()
        if forced is not None:
            (i, j), label = forced
            (sink if label == 1 else source)[i, j] += 1e9  # forbid the other label
        graph.add_grid_tedges(nodes, source, sink)
        graph.maxflow()
        labels = torch.from_numpy(graph.get_grid_segments(nodes).astype(np.int64))
        return labels, float(loop_graph_cut_energy(labels, unary.double(), lam))

    best, energy = least_energy()
    return min(least_energy(((i, j), 1 - int(best[i, j])))[1] - energy
               for i, j in itertools.product(range(height), range(width)))


def test_graph_cut_cases_have_one_right_answer():
    """Every graph-cut case has a unique minimum cut, by a margin of at least 1e-3 in energy
    (far above float32 round-off of the unaries)."""
    for check_id, (cases, _, _) in recorded_checks("graph_cut_segment").items():
        for number, case in enumerate(cases, start=1):
            gap = _forced_flip_gap(case["unary"], case["lam"])
            assert gap >= 1e-3, f"{check_id} case {number}: second-best labelling {gap:.3g} away"
