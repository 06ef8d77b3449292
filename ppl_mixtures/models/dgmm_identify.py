"""Identifiability of the DGMM: canonical forms (Selosse et al. 2020, sec. 3.4), path alignment.

The likelihood of a DGMM (Selosse et al. 2020, eqs. 3-6) depends on its parameters only through
the path weights, means and covariances, so many parameter values give the same model. For h
layers, ``p_0 = D`` and ``p_l = r_l``, the continuous symmetries are (generically):

* **last layer** ``h``: only ``Lambda^(h)_g Lambda^(h)_g^T`` enters eq. (6) because
  ``z^(h) ~ N(0, I)``, so each ``Lambda^(h)_g -> Lambda^(h)_g R_g`` with ``R_g`` in ``O(r_h)``
  (one rotation *per component*);
* **intermediate score** ``z^(l)``, ``l < h``: a change ``z' = A z + c`` of the score shared by
  every path is absorbed by ``Lambda^(l)_g A^-1``, ``eta^(l)_g - Lambda^(l)_g A^-1 c`` (columns
  of layer l) and ``A eta^(l+1)_g + c``, ``A Lambda^(l+1)_g``, ``A Psi^(l+1)_g A^T`` (rows of
  layer l+1). It is a reparametrisation only if every ``A Psi^(l+1)_g A^T`` stays diagonal.
  With ``G_{l+1} >= 2`` components of generic (non-proportional) noise this forces
  ``A = P D``: a permutation times a diagonal (signs and scales) -- an intermediate rotation
  is *not* a symmetry, it would make ``Psi^(l+1)`` non-diagonal. With ``G_{l+1} = 1``,
  however, ``A = D Q Psi^(l+1)^(-1/2)`` keeps ``A Psi A^T = D^2`` diagonal for *any*
  orthogonal ``Q``: the score then has a rotation freedom in its noise-whitened metric
  (``r_l (r_l - 1) / 2`` more symmetries than a count that assumes ``A = P D``).

Canonical forms
---------------
:func:`identify` maps a parameter value to one representative of its symmetry class, with
the constraints of section 3.4 applied *exactly where they are reparametrisations*. The paper
imposes them as constraints during fitting; for a likelihood-invariant model a post-hoc
canonical form is what is sound: for the last layer constraining during fitting and rotating
afterwards reach the same likelihood, while for an intermediate layer (which has no rotation
freedom when ``G_{l+1} >= 2``) "orthonormal", "lower triangular" or "diagonal" loadings would
be genuine restrictions that change the model and its maximum. :func:`identify` never changes
the likelihood (nor the path numbering); it only picks the representative. The paper writes
``Lambda^T psi Lambda``; the factor-analysis convention ``Lambda^T Psi^-1 Lambda`` is used.

Per constraint and layer (``pi`` = the layer's weights; "pooled" = over the layer's
components, since a score change is shared by all of them):

=================== ============================== =============================================
constraint          last layer h (per component g) intermediate z^(l), l < h
=================== ============================== =============================================
lower_triangular    ``Lambda^(h)_g`` lower          mean 0, unit marginal variance (as z^(h));
                    triangular, diagonal > 0        coordinates ordered so that the pooled
                    (QR of ``Lambda^T``)            ``sum_g pi_g Lambda_g[:r]**2`` is most
                                                    diagonal (Hungarian on its log); signs so the
                                                    pooled mean ``sum_g pi_g Lambda_g`` has a
                                                    positive diagonal. Cannot zero the upper
                                                    triangle. If ``G_{l+1} = 1``: the pooled mean
                                                    loading is lower triangular with positive
                                                    diagonal (whitened rotation), then unit
                                                    variance.
diagonal            ``Lambda^T Psi^-1 Lambda``      mean 0, unit marginal variance; coordinates
                    diagonal, decreasing (SVD of    ordered by decreasing pooled diagonal of
                    ``Psi^-1/2 Lambda``)            ``sum_g pi_g Lambda_g^T Psi_g^-1 Lambda_g``.
                                                    Cannot zero its off-diagonal; if
                                                    ``G_{l+1} = 1`` it is diagonal too.
orthonormal         orthogonal columns, decreasing  mean 0, pooled column norms
                    norms (SVD; the norms are the   ``sum_g pi_g |Lambda_g[:, j]|^2 = 1``;
                    score s.d.s of the orthonormal  ordered by decreasing marginal score
                    form ``U (S z)``)               variance. Cannot make columns orthogonal; if
                                                    ``G_{l+1} = 1`` the pooled Gram
                                                    ``sum_g pi_g Lambda_g^T Lambda_g`` is ``I``.
=================== ============================== =============================================

Remaining column signs (diagonal, orthonormal) make each column's largest-magnitude entry
positive (for intermediate layers: among the ``sqrt(pi_g)``-weighted stacked columns).
Scores are processed from the data down (``z^(1)`` first, whose rows are data coordinates),
then the last layer is rotated. Not fixed: the component labels of each layer (label
switching; see :func:`match_layers` / :func:`permute_components`), and non-generic extra
freedom (tied eigen/singular values, proportional noise across components, rank-deficient
loadings, non-identified factor models).

Alignment
---------
Path labels are a product ``s = (s_1, ..., s_h)`` (row-major, ``s_1`` slowest, as in
:mod:`ppl_mixtures.models.dgmm`). Permutations here follow the *gather* convention:
``perm[i]`` is the index in the other run that matches the reference's ``i``, so
``other[perm]`` is aligned with the reference. :func:`match_paths` matches path means
(Hungarian), :func:`match_layers` finds one permutation per layer (a relabelling that keeps
the tree structure), :func:`permute_components` applies them, :func:`path_permutation` gives
the induced path permutation, :func:`relabel_labels` aligns label arrays through their
contingency table and :func:`align_paths` dispatches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ppl_mixtures.models.dgmm import DGMMParams, path_index, path_layer_labels, path_moments

CONSTRAINTS = ("lower_triangular", "diagonal", "orthonormal")


# ---------------------------------------------------------------------------------------------
# Symmetry transformations (each leaves the likelihood unchanged)
# ---------------------------------------------------------------------------------------------


def _copy(params: DGMMParams) -> DGMMParams:
    return DGMMParams(*[[t.clone() for t in getattr(params, name)]
                        for name in ("weights", "eta", "loadings", "noise_variances")])


def _transform(params: DGMMParams, index: int, matrix: Tensor, shift: Tensor | None) -> DGMMParams:
    """``z' = A z + c`` for the score between list layers ``index`` and ``index + 1``.

    Keeps only the diagonal of ``A Psi A^T``: callers pass an ``A`` that keeps it diagonal.
    """
    out = _copy(params)
    inverse = torch.linalg.inv(matrix)
    out.loadings[index] = params.loadings[index] @ inverse
    out.eta[index + 1] = params.eta[index + 1] @ matrix.mT
    out.loadings[index + 1] = matrix @ params.loadings[index + 1]
    out.noise_variances[index + 1] = params.noise_variances[index + 1] @ (matrix ** 2).mT
    if shift is not None:
        out.eta[index] = params.eta[index] - (out.loadings[index] @ shift[:, None]).squeeze(-1)
        out.eta[index + 1] = out.eta[index + 1] + shift
    return out


def transform_scores(params: DGMMParams, layer: int, matrix: Tensor,
                     shift: Tensor | None = None) -> DGMMParams:
    """Reparametrise the intermediate score ``z^(l)`` as ``z' = A z + c`` (likelihood invariant).

    Parameters
    ----------
    params : DGMMParams
    layer : int
        ``l`` in ``1 .. h-1`` (the score between layers l and l+1).
    matrix : Tensor, shape (r_l, r_l)
        Invertible ``A`` such that every ``A Psi^(l+1)_g A^T`` is diagonal: ``P D`` in general,
        any ``D Q Psi^(l+1)^(-1/2)`` (``Q`` orthogonal) when ``G_{l+1} = 1``.
    shift : Tensor, shape (r_l,), optional
        ``c``; zero when omitted.

    Returns
    -------
    DGMMParams
        Same likelihood: ``Lambda^(l)_g A^-1``, ``eta^(l)_g - Lambda^(l)_g A^-1 c``,
        ``A eta^(l+1)_g + c``, ``A Lambda^(l+1)_g``, ``diag(A Psi^(l+1)_g A^T)``.

    Raises
    ------
    ValueError
        If ``layer`` is out of range or ``A`` would make some ``Psi^(l+1)_g`` non-diagonal.
    """
    if not 1 <= layer < params.n_layers:
        raise ValueError(
            f"layer={layer} must be an intermediate score, in 1..{params.n_layers - 1}")
    noise = params.noise_variances[layer]
    full = matrix @ torch.diag_embed(noise) @ matrix.mT
    off = full - torch.diag_embed(torch.diagonal(full, dim1=-2, dim2=-1))
    if off.abs().max() > 1e-8 * full.abs().max():
        raise ValueError(
            f"matrix makes Psi^({layer + 1}) non-diagonal, so it is not a reparametrisation; use "
            f"a permutation times a diagonal (or D Q Psi^-1/2 when G_{layer + 1} = 1)")
    return _transform(params, layer - 1, matrix, shift)


def rotate_last_layer(params: DGMMParams, rotations: Tensor) -> DGMMParams:
    """``Lambda^(h)_g -> Lambda^(h)_g R_g`` (likelihood invariant since ``z^(h) ~ N(0, I)``).

    Parameters
    ----------
    params : DGMMParams
    rotations : Tensor, shape (G_h, r_h, r_h)
        Orthogonal matrices, one per last-layer component.

    Returns
    -------
    DGMMParams
    """
    eye = torch.eye(rotations.shape[-1], dtype=rotations.dtype, device=rotations.device)
    if (rotations.mT @ rotations - eye).abs().max() > 1e-8:
        raise ValueError("rotations must be orthogonal matrices, shape (G_h, r_h, r_h)")
    out = _copy(params)
    out.loadings[-1] = params.loadings[-1] @ rotations
    return out


def score_moments(params: DGMMParams, layer: int) -> tuple[Tensor, Tensor]:
    """Marginal mean and per-coordinate variance of the score ``z^(l)`` (a Gaussian mixture).

    Parameters
    ----------
    params : DGMMParams
    layer : int
        ``l`` in ``1 .. h``; ``z^(h)`` gives zeros and ones.

    Returns
    -------
    mean : Tensor, shape (r_l,)
    variance : Tensor, shape (r_l,)
    """
    if layer == params.n_layers:
        like = params.loadings[-1]
        rank = params.n_factors[-1]
        return like.new_zeros(rank), like.new_ones(rank)
    deeper = DGMMParams(params.weights[layer:], params.eta[layer:], params.loadings[layer:],
                        params.noise_variances[layer:])
    log_weights, means, covariances = path_moments(deeper)
    weights = log_weights.exp()
    mean = weights @ means
    second = weights @ (torch.diagonal(covariances, dim1=-2, dim2=-1) + means ** 2)
    return mean, second - mean ** 2


# ---------------------------------------------------------------------------------------------
# Canonical forms
# ---------------------------------------------------------------------------------------------


def _check_constraint(constraint: str) -> None:
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint={constraint!r} is not one of {CONSTRAINTS}")


def _column_signs(columns: Tensor) -> Tensor:
    """``(..., r)`` signs making each column's largest-magnitude entry positive."""
    rows = columns.abs().argmax(-2, keepdim=True)
    signs = torch.gather(columns, -2, rows).squeeze(-2).sign()
    return torch.where(signs == 0, torch.ones_like(signs), signs)


def _canonical_rotation(loadings: Tensor, noise: Tensor, constraint: str) -> Tensor:
    """Orthogonal ``R`` (..., r, r) such that ``loadings @ R`` meets ``constraint``.

    Parameters
    ----------
    loadings : Tensor, shape (..., p, r)
    noise : Tensor, shape (..., p)
        Noise variances (used by ``"diagonal"``).
    """
    if constraint == "lower_triangular":
        q, upper = torch.linalg.qr(loadings.mT)  # loadings @ q = upper^T (lower trapezoidal)
        signs = torch.diagonal(upper, dim1=-2, dim2=-1).sign()
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return q * signs[..., None, :]
    scaled = loadings / noise.sqrt()[..., None] if constraint == "diagonal" else loadings
    _, _, vh = torch.linalg.svd(scaled, full_matrices=False)  # decreasing singular values
    rotation = vh.mT
    return rotation * _column_signs(loadings @ rotation)[..., None, :]


def _pooled(params: DGMMParams, index: int) -> tuple[Tensor, Tensor]:
    """``sqrt(pi_g)``-weighted loadings of a layer stacked over components: (G p, r), (G p,)."""
    weights = params.weights[index].sqrt()[:, None, None]
    stacked = (weights * params.loadings[index]).reshape(-1, params.loadings[index].shape[-1])
    return stacked, params.noise_variances[index].reshape(-1)


def _mean_loading(params: DGMMParams, index: int) -> Tensor:
    """``sum_g pi_g Lambda_g``, shape (p, r)."""
    return torch.einsum("g,gpr->pr", params.weights[index], params.loadings[index])


def _rotate_score(params: DGMMParams, index: int, constraint: str) -> DGMMParams:
    """``G_{l+1} = 1``: whiten ``Psi^(l+1)`` to ``I`` and fix the remaining rotation."""
    whiten = torch.diag_embed(params.noise_variances[index + 1][0].rsqrt())
    params = _transform(params, index, whiten, None)
    if constraint == "lower_triangular":
        rotation = _canonical_rotation(_mean_loading(params, index), None, constraint)
    else:
        rotation = _canonical_rotation(*_pooled(params, index), constraint)
    return _transform(params, index, rotation.mT, None)  # z' = R^T z: Lambda -> Lambda R


def _permutation_matrix(order: Tensor, like: Tensor) -> Tensor:
    """``A`` with ``(A z)_i = z_{order[i]}``."""
    eye = torch.eye(order.numel(), dtype=like.dtype, device=like.device)
    return eye[order]


def _score_order(params: DGMMParams, index: int, constraint: str) -> Tensor:
    """Order of the score's coordinates, shape (r,) long (gather convention)."""
    if constraint == "orthonormal":
        _, variance = score_moments(params, index + 1)
        return torch.argsort(variance, descending=True, stable=True)
    if constraint == "diagonal":
        loadings, noise = _pooled(params, index)
        signal = ((loadings ** 2) / noise[:, None]).sum(0)
        return torch.argsort(signal, descending=True, stable=True)
    rank = params.loadings[index].shape[-1]
    top = params.loadings[index][:, :rank]
    squares = torch.einsum("g,gpr->pr", params.weights[index], top ** 2)
    log_squares = squares.clamp_min(torch.finfo(squares.dtype).tiny).log()
    _, columns = linear_sum_assignment(log_squares.detach().cpu().numpy(), maximize=True)
    return torch.as_tensor(columns, device=squares.device)


def _score_signs(params: DGMMParams, index: int, constraint: str) -> Tensor:
    if constraint == "lower_triangular":
        signs = torch.diagonal(_mean_loading(params, index)).sign()
        return torch.where(signs == 0, torch.ones_like(signs), signs)
    return _column_signs(_pooled(params, index)[0])


def _score_scales(params: DGMMParams, index: int, constraint: str) -> Tensor:
    """``d`` of ``z' = diag(d) z``: unit pooled column norms or unit marginal variance."""
    if constraint == "orthonormal":
        return (_pooled(params, index)[0] ** 2).sum(0).sqrt()
    return score_moments(params, index + 1)[1].rsqrt()


def _identify_score(params: DGMMParams, index: int, constraint: str, center: bool) -> DGMMParams:
    """Canonical form of the intermediate score between list layers ``index`` and ``index+1``."""
    if center:
        mean, _ = score_moments(params, index + 1)
        params = _transform(params, index, torch.eye(mean.numel(), dtype=mean.dtype,
                                                     device=mean.device), -mean)
    rotated = params.n_components[index + 1] == 1
    if rotated:
        params = _rotate_score(params, index, constraint)
    params = _transform(params, index, torch.diag(_score_scales(params, index, constraint)), None)
    if rotated and constraint == "lower_triangular":
        return params  # the triangle fixes order and signs; positive scales keep them
    like = params.loadings[index]
    order = _score_order(params, index, constraint)
    params = _transform(params, index, _permutation_matrix(order, like), None)
    return _transform(params, index, torch.diag(_score_signs(params, index, constraint)), None)


def identify(params: DGMMParams, constraint: str = "lower_triangular", *,
             center: bool = True) -> DGMMParams:
    """Canonical representative of ``params`` under the DGMM's symmetries (section 3.4).

    See the module docstring for what each constraint fixes per layer. The log-likelihood of
    every sample, the path numbering and the component labels are unchanged.

    Parameters
    ----------
    params : DGMMParams
        Layers ``1..h``; shapes as in :class:`~ppl_mixtures.models.dgmm.DGMMParams`.
    constraint : {"lower_triangular", "diagonal", "orthonormal"}, default "lower_triangular"
        ``"lower_triangular"``: ``Lambda^(h)_g`` lower triangular with a positive diagonal;
        ``"diagonal"``: ``Lambda^(h)_g^T Psi^(h)_g^-1 Lambda^(h)_g`` diagonal, decreasing;
        ``"orthonormal"``: ``Lambda^(h)_g`` with orthogonal columns ordered by decreasing norm
        (score standard deviation). Intermediate scores get the attainable analogue.
    center : bool, default True
        Also fix the shift symmetry of each intermediate score ``z^(l)``, ``l < h``, by giving
        it marginal mean zero (as ``z^(h)``).

    Returns
    -------
    DGMMParams
        New tensors; ``identify(identify(p, c), c)`` equals ``identify(p, c)``.

    Raises
    ------
    ValueError
        If ``constraint`` is not one of :data:`CONSTRAINTS`.
    """
    _check_constraint(constraint)
    out = _copy(params)
    for index in range(params.n_layers - 1):
        out = _identify_score(out, index, constraint, center)
    rotations = _canonical_rotation(out.loadings[-1], out.noise_variances[-1], constraint)
    out.loadings[-1] = out.loadings[-1] @ rotations
    return out


# ---------------------------------------------------------------------------------------------
# Alignment of components, paths and labels across runs
# ---------------------------------------------------------------------------------------------


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def match_paths(reference_means: Tensor | np.ndarray, means: Tensor | np.ndarray) -> np.ndarray:
    """Permutation of paths matching ``means`` to ``reference_means`` (Hungarian, squared
    Euclidean distance).

    Parameters
    ----------
    reference_means, means : Tensor or ndarray, shape (P, D)

    Returns
    -------
    ndarray of int, shape (P,)
        ``perm`` with ``means[perm]`` aligned to ``reference_means``.
    """
    reference, other = _as_numpy(reference_means), _as_numpy(means)
    if reference.ndim != 2 or reference.shape != other.shape:
        raise ValueError(f"reference_means and means must both have shape (P, D); got "
                         f"{reference.shape} and {other.shape}")
    cost = ((reference[:, None, :] - other[None, :, :]) ** 2).sum(-1)
    _, columns = linear_sum_assignment(cost)
    return columns


def path_permutation(permutations: Sequence[Sequence[int]],
                     n_components: Sequence[int]) -> np.ndarray:
    """Path permutation induced by per-layer component permutations.

    Parameters
    ----------
    permutations : sequence of h int sequences, lengths G_l
        Gather convention: new component ``a`` of layer l is old component ``perm_l[a]``.
    n_components : sequence of int

    Returns
    -------
    ndarray of int, shape (P,)
        New path ``p = (a_1, ..., a_h)`` is old path ``(perm_1[a_1], ..., perm_h[a_h])``.
    """
    table = path_layer_labels(n_components)
    mapped = torch.stack([torch.as_tensor(np.asarray(perm), dtype=torch.long)[table[:, layer]]
                          for layer, perm in enumerate(permutations)], dim=-1)
    return path_index(mapped, n_components).numpy()


def permute_components(params: DGMMParams, permutations: Sequence[Sequence[int]]) -> DGMMParams:
    """Reorder each layer's components (likelihood invariant; paths relabelled accordingly).

    Parameters
    ----------
    params : DGMMParams
    permutations : sequence of h int sequences, lengths G_l
        New component ``a`` of layer l is old component ``permutations[l][a]``; path ``p``
        of the result is path ``path_permutation(permutations, G)[p]`` of ``params``.

    Returns
    -------
    DGMMParams
    """
    if len(permutations) != params.n_layers:
        raise ValueError(f"permutations needs one entry per layer ({params.n_layers}), "
                         f"got {len(permutations)}")
    fields = {name: [] for name in ("weights", "eta", "loadings", "noise_variances")}
    for layer, (perm, size) in enumerate(zip(permutations, params.n_components, strict=True)):
        perm = np.asarray(perm)
        if sorted(perm.tolist()) != list(range(size)):
            raise ValueError(f"permutations[{layer}]={perm.tolist()} is not a permutation of "
                             f"range({size})")
        index = torch.as_tensor(perm, dtype=torch.long, device=params.weights[layer].device)
        for name, values in fields.items():
            values.append(getattr(params, name)[layer][index])
    return DGMMParams(**fields)


def _path_divergences(reference: DGMMParams, params: DGMMParams) -> np.ndarray:
    """Symmetrised KL divergence between every pair of path Gaussians, shape (P_ref, P)."""
    _, means_a, cov_a = path_moments(reference)
    _, means_b, cov_b = path_moments(params.to(means_a))
    inv_a, inv_b = torch.linalg.inv(cov_a), torch.linalg.inv(cov_b)
    traces = (torch.einsum("jab,iab->ij", inv_b, cov_a)
              + torch.einsum("iab,jab->ij", inv_a, cov_b))
    delta = means_b[None, :, :] - means_a[:, None, :]  # (P_ref, P, D)
    mahalanobis = (torch.einsum("ija,iab,ijb->ij", delta, inv_a, delta)
                   + torch.einsum("ija,jab,ijb->ij", delta, inv_b, delta))
    return (0.5 * (traces + mahalanobis) - means_a.shape[-1]).detach().cpu().numpy()


def _layer_by_layer(cost: np.ndarray, n_components: Sequence[int],
                    max_sweeps: int = 50) -> list[np.ndarray]:
    """Coordinate descent: one Hungarian assignment per layer, others fixed, until stable."""
    table = path_layer_labels(n_components).numpy()
    rows = np.arange(table.shape[0])
    perms = [np.arange(size) for size in n_components]
    for _ in range(max_sweeps):
        changed = False
        for layer, size in enumerate(n_components):
            mapped = np.stack([perm[table[:, k]] for k, perm in enumerate(perms)], axis=-1)
            layer_cost = np.zeros((size, size))
            for candidate in range(size):
                mapped[:, layer] = candidate
                other = path_index(torch.as_tensor(mapped), n_components).numpy()
                np.add.at(layer_cost[:, candidate], table[:, layer], cost[rows, other])
            _, columns = linear_sum_assignment(layer_cost)
            changed |= not np.array_equal(columns, perms[layer])
            perms[layer] = columns
        if not changed:
            break
    return perms


def match_layers(reference_params: DGMMParams, params: DGMMParams, *, method: str = "auto",
                 max_candidates: int = 20_000) -> list[np.ndarray]:
    """Per-layer component permutations aligning ``params`` with ``reference_params``.

    The agreement of a candidate ``(perm_1, ..., perm_h)`` is the total symmetrised KL
    divergence between each reference path Gaussian and the path of ``params`` it maps to
    (path moments are invariant to every continuous symmetry, so no :func:`identify` is
    needed first).

    Parameters
    ----------
    reference_params, params : DGMMParams
        Same ``n_components`` and ``n_features``.
    method : {"auto", "brute", "hungarian"}, default "auto"
        ``"brute"``: every product of per-layer permutations (exact); ``"hungarian"``:
        layer-by-layer Hungarian assignments repeated until stable (a local optimum);
        ``"auto"``: brute force when ``prod_l G_l! <= max_candidates``.
    max_candidates : int, default 20000

    Returns
    -------
    list of ndarray of int, shapes (G_l,)
        Gather convention: pass to :func:`permute_components` to align ``params``.
    """
    if method not in ("auto", "brute", "hungarian"):
        raise ValueError(f"method={method!r} is not one of ('auto', 'brute', 'hungarian')")
    sizes = reference_params.n_components
    if params.n_components != sizes:
        raise ValueError(f"n_components differ: reference {sizes}, params {params.n_components}")
    cost = _path_divergences(reference_params, params)
    n_candidates = math.prod(math.factorial(size) for size in sizes)
    if method == "hungarian" or (method == "auto" and n_candidates > max_candidates):
        return _layer_by_layer(cost, sizes)
    rows = np.arange(cost.shape[0])
    best, best_cost = None, np.inf
    for candidate in itertools.product(*[itertools.permutations(range(g)) for g in sizes]):
        total = cost[rows, path_permutation(candidate, sizes)].sum()
        if total < best_cost:
            best, best_cost = candidate, total
    return [np.asarray(perm) for perm in best]


def _label_permutation(reference_labels: Any, labels: Any, n_labels: int | None) -> np.ndarray:
    """Hungarian on the contingency table; ``perm[i]`` = label of ``labels`` matching ``i``."""
    reference, other = _as_numpy(reference_labels), _as_numpy(labels)
    if reference.ndim != 1 or reference.shape != other.shape:
        raise ValueError(f"reference_labels and labels must be 1-d of equal length; got shapes "
                         f"{reference.shape} and {other.shape}")
    if reference.size and (reference.min() < 0 or other.min() < 0):
        raise ValueError("labels must be non-negative integers")
    size = max(int(n_labels or 0), int(reference.max(initial=-1)) + 1,
               int(other.max(initial=-1)) + 1)
    table = np.zeros((size, size))
    np.add.at(table, (reference.astype(int), other.astype(int)), 1.0)
    _, columns = linear_sum_assignment(table, maximize=True)
    return columns


def relabel_labels(reference_labels: Any, labels: Any, n_labels: int | None = None) -> np.ndarray:
    """Rename ``labels`` to agree best with ``reference_labels`` (Hungarian on the contingency
    table).

    Parameters
    ----------
    reference_labels, labels : array-like of int, shape (N,)
    n_labels : int, optional
        Number of label values (at least one more than the largest label seen).

    Returns
    -------
    ndarray of int, shape (N,)
        ``labels`` renamed so that the matched classes carry the reference's names.
    """
    perm = _label_permutation(reference_labels, labels, n_labels)
    return np.argsort(perm)[_as_numpy(labels).astype(int)]


def align_paths(reference: DGMMParams | Any, other: DGMMParams | Any, *, structured: bool = True,
                n_paths: int | None = None) -> np.ndarray:
    """Permutation of ``other``'s paths that best matches ``reference``'s.

    Parameters
    ----------
    reference, other : DGMMParams, or array-like of int, shape (N,)
        Two fitted parameter sets, or two path-label arrays of the same samples.
    structured : bool, default True
        For parameters: respect the tree structure (one permutation per layer, by
        :func:`match_layers`); False matches path means freely (:func:`match_paths`).
    n_paths : int, optional
        For labels: the number of paths P (labels may not use them all).

    Returns
    -------
    ndarray of int, shape (P,)
        Gather convention: ``perm[i]`` is the path of ``other`` matching reference path ``i``;
        ``log_joint(x, other)[:, perm]`` is aligned with the reference.
    """
    if isinstance(reference, DGMMParams) and isinstance(other, DGMMParams):
        if structured:
            return path_permutation(match_layers(reference, other), reference.n_components)
        return match_paths(path_moments(reference)[1], path_moments(other)[1])
    if isinstance(reference, DGMMParams) or isinstance(other, DGMMParams):
        raise ValueError("align_paths needs two DGMMParams or two label arrays, not a mix")
    return _label_permutation(reference, other, n_paths)


__all__ = [
    "CONSTRAINTS",
    "align_paths",
    "identify",
    "match_layers",
    "match_paths",
    "path_permutation",
    "permute_components",
    "relabel_labels",
    "rotate_last_layer",
    "score_moments",
    "transform_scores",
]
