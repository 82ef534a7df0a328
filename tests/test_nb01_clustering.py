"""Notebook 01's test cells: independent correct implementations earn every point, and each
common mistake fails a test cell with a message that says what differs.

The test cells (visible and hidden) are run by ``checks.run_test_cells`` against the references
recorded in ``autograder/references/01_clustering`` (``segcourse references 01_clustering``).
The correct implementations below are written differently from the notebook's solutions: NumPy
and SciPy in float64, loops instead of broadcasting, another eigensolver, another max-flow.
"""

from __future__ import annotations

import itertools
import sys
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

from checks import run_test_cells  # noqa: E402

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


def segment_lambda_twice(unary, lam):
    """Mistake: 2 * lam on every edge (e.g. adding each grid edge twice)."""
    return swapped_maxflow_graph_cut_segment(unary, 2 * lam)


# --------------------------------------------------------------------------------------------
# crf_mean_field
# --------------------------------------------------------------------------------------------


def numpy_crf_mean_field(unary_logits, image, iters, theta_alpha=8.0, theta_beta=0.1,
                         theta_gamma=1.5, w_appearance=0.5, w_smooth=0.5, *, include_image=True,
                         include_self=False, sign=1.0):
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

    def softmax(scores):
        scores = scores - scores.max(axis=0, keepdims=True)
        return np.exp(scores) / np.exp(scores).sum(axis=0, keepdims=True)

    q = softmax(logits)
    for _ in range(iters):
        q = softmax(logits + sign * (kernel @ q.T).T)
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
    ("kmeans", kmeans_no_update),
    ("kmeans", kmeans_stale_labels),
    ("kmeans", kmeans_empty_nan),
    ("kmeans", kmeans_last_tie),
    ("affinity_matrix", affinity_sigma_squared),
    ("affinity_matrix", affinity_not_squared),
    ("affinity_matrix", affinity_zero_diagonal),
    ("fiedler_vector", fiedler_smallest),
    ("fiedler_vector", fiedler_not_mapped_back),
    ("fiedler_vector", fiedler_unnormalised_laplacian),
    ("ncut_bipartition", ncut_smallest),
    ("ncut_bipartition", ncut_third),
    ("graph_cut_energy", energy_pairs_twice),
    ("graph_cut_energy", energy_eight_neighbours),
    ("graph_cut_energy", energy_swapped_unary),
    ("graph_cut_energy", energy_no_lambda),
    ("graph_cut_segment", segment_swapped_labels),
    ("graph_cut_segment", segment_ignores_lambda),
    ("graph_cut_segment", segment_lambda_twice),
    ("crf_mean_field", crf_ignores_image),
    ("crf_mean_field", crf_keeps_self),
    ("crf_mean_field", crf_subtracts_messages),
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
