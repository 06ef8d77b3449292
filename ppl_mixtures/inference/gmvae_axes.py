"""The GMVAE's start in the common principal axes of its latent mixture.

The GMVAE carries each full covariance ``S_k`` of the latent mixture over as a factor analyser
``B_k B_k^T + diag(psi_k)`` with ``Dw`` factors (:func:`~ppl_mixtures.inference.
gmvae_pretrain.gmm_start`): what the diagonal ``psi_k`` cannot hold is lost. The diagonal is
taken along the latent space's axes, and those axes are arbitrary after the pre-training: an
orthogonal map ``R`` of the latent space, absorbed by the encoder's ``x`` mean (``x -> R^T x``)
and the decoder's first layer (``W -> W R``), leaves the autoencoder's function unchanged.
So the start first turns the latent space to the axes in which the K covariances are most
nearly diagonal at once, their *common principal components* (Flury 1984), found by the FG
algorithm of Flury and Gautschi (1986): minimise ``sum_k n_k log det diag(R^T S_k R)`` over
orthogonal ``R`` by rotations of one pair of axes at a time.

On scikit-learn's digits (K = 10, Dw = 2, seeds 0-11) the carried-over mixture, with
maximum-likelihood factor analysers, scores 0.06-1.61 points of accuracy (mean 0.76) above the
unturned principal-axes start (``bench/RESULTS.md``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ppl_mixtures.models.gmvae import GMVAENetworks

#: Sweeps over all pairs of axes, and the relative decrease of the criterion that ends them.
AXES_MAX_SWEEPS = 30
AXES_TOL = 1e-9
#: Pair rotations at most in all (sweeps are cut to fit): 0.2-0.4 ms each, so a latent space
#: of Dx = 10 (45 pairs) sweeps until converged (0.3 s), Dx = 60 five times (2 s) and Dx = 200
#: (19,900 pairs, the MNIST presets) once (about 8 s).
AXES_MAX_ROTATIONS = 10_000
#: Iterations of the 2 x 2 problem of one pair (the G-algorithm of Flury and Gautschi 1986).
PAIR_MAX_ITER = 10


def _criterion(rotation: np.ndarray, covariances: np.ndarray, sizes: np.ndarray) -> float:
    """``sum_k n_k sum_d log (R^T S_k R)_dd``."""
    diagonals = np.einsum("dk,nde,ek->nk", rotation, covariances, rotation)
    return float((sizes[:, None] * np.log(diagonals)).sum())


def _pair_rotation(blocks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The 2 x 2 rotation ``Q`` that makes the K blocks ``T_k`` (K, 2, 2) most nearly
    diagonal at once (the G-algorithm: ``Q`` the eigenvectors of ``sum_k n_k (d1_k - d2_k) /
    (d1_k d2_k) T_k`` with ``d_ik = q_i^T T_k q_i``, repeated)."""
    rotation = np.eye(2)
    for _ in range(PAIR_MAX_ITER):
        first = np.einsum("i,nij,j->n", rotation[:, 0], blocks, rotation[:, 0])
        second = np.einsum("i,nij,j->n", rotation[:, 1], blocks, rotation[:, 1])
        coefficients = sizes * (first - second) / (first * second)
        matrix = np.einsum("n,nij->ij", coefficients, blocks)
        if not np.abs(matrix).max() > 0:
            break
        _, vectors = np.linalg.eigh(matrix)
        if abs(vectors[:, 0] @ rotation[:, 0]) < abs(vectors[:, 1] @ rotation[:, 0]):
            vectors = vectors[:, ::-1]
        vectors = vectors * np.sign(np.diag(vectors.T @ rotation))[None]
        done = np.abs(vectors - rotation).max() < 1e-12
        rotation = vectors
        if done:
            break
    return rotation


def common_axes(covariances: Tensor | np.ndarray, sizes: Tensor | np.ndarray | None = None,
                max_sweeps: int = AXES_MAX_SWEEPS, tol: float = AXES_TOL,
                max_rotations: int = AXES_MAX_ROTATIONS) -> Tensor:
    """The orthogonal axes in which K covariances are most nearly diagonal at once.

    The common principal components of Flury (1984) by the FG algorithm of Flury and
    Gautschi (1986): from the eigenvectors of the pooled covariance, each pair of axes
    ``(j, l)`` is turned by the 2 x 2 rotation that lowers ``sum_k n_k log det diag(R^T S_k
    R)`` (kept only if it does), sweeping over all pairs until a sweep lowers it by less than
    ``tol`` relative. When the covariances share their eigenvectors, these are the axes found.

    Parameters
    ----------
    covariances : Tensor or ndarray, shape (K, D, D)
        Symmetric positive definite.
    sizes : Tensor or ndarray, shape (K,), optional
        Weights ``n_k`` of the covariances (e.g. the clusters' sizes); default all 1.
    max_sweeps : int, default :data:`AXES_MAX_SWEEPS`
    tol : float, default :data:`AXES_TOL`
    max_rotations : int, default :data:`AXES_MAX_ROTATIONS`
        At most this many pair rotations in all: the sweeps are cut to
        ``max(1, max_rotations // (D (D - 1) / 2))``, so large latent spaces get one sweep.

    Returns
    -------
    Tensor, shape (D, D), float64
        Orthogonal; column ``d`` is the d-th axis, ordered by the weighted variance along it
        (largest first), each with its entry of largest magnitude positive.
    """
    values = np.asarray(covariances, dtype=np.float64)
    n_components, dim, _ = values.shape
    weights = (np.ones(n_components) if sizes is None
               else np.asarray(sizes, dtype=np.float64).reshape(n_components))
    _, rotation = np.linalg.eigh(np.einsum("n,nij->ij", weights, values))
    rotation = np.ascontiguousarray(rotation[:, ::-1])
    previous = _criterion(rotation, values, weights)
    sweeps = min(max_sweeps, max(1, max_rotations // max(1, dim * (dim - 1) // 2)))
    for _ in range(sweeps):
        for j in range(dim - 1):
            for k in range(j + 1, dim):
                pair = rotation[:, [j, k]]
                blocks = pair.T[None] @ values @ pair[None]  # (K, 2, 2)
                turn = _pair_rotation(blocks, weights)
                before = np.log(np.diagonal(blocks, axis1=1, axis2=2))
                turned = turn.T[None] @ blocks @ turn[None]
                after = np.log(np.diagonal(turned, axis1=1, axis2=2))
                if (weights[:, None] * after).sum() < (weights[:, None] * before).sum():
                    rotation[:, [j, k]] = pair @ turn
        current = _criterion(rotation, values, weights)
        if previous - current <= tol * abs(current):
            break
        previous = current
    return torch.as_tensor(_canonical(rotation, values, weights))


def _canonical(rotation: np.ndarray, covariances: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The axes in a canonical order and orientation: by the weighted variance along them
    (largest first), each with its largest entry positive. Axes are defined up to order and
    sign, and eigenvectors come with arbitrary signs: without this, two fits whose
    covariances differ by rounding could start in mirrored latent spaces."""
    variances = np.einsum("n,dk,nde,ek->k", sizes, rotation, covariances, rotation)
    rotation = rotation[:, np.argsort(-variances, kind="stable")]
    largest = rotation[np.abs(rotation).argmax(0), np.arange(rotation.shape[1])]
    return rotation * np.where(largest < 0, -1.0, 1.0)[None]


def _first_linear(module: nn.Module) -> nn.Linear | None:
    """The first module holding parameters in ``module``, if it is an ``nn.Linear``."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            return child
        if any(True for _ in child.parameters(recurse=False)):
            return None
    return None


def rotate_latent_space(networks: GMVAENetworks, rotation: Tensor, probe: Tensor,
                        output: nn.Linear | None) -> bool:
    """Turn the latent space of x by ``rotation`` R (in place): ``x_new = R^T x``.

    The encoder's ``x_loc`` outputs (rows ``[:Dx]`` of its last ``nn.Linear``) become ``R^T
    x_loc`` and the decoder's first ``nn.Linear`` (``Dx`` inputs) gets weights ``W R``, so
    ``decoder(R^T x) = decoder(x)``: the autoencoder's function is unchanged, checked on the
    latents ``probe``. The ``x_log_var`` outputs are not turned (the start sets them to
    constants).

    Parameters
    ----------
    networks : GMVAENetworks
    rotation : Tensor, shape (Dx, Dx)
        Orthogonal.
    probe : Tensor, shape (n, Dx)
        Latents on which the decoder's outputs before and after must agree.
    output : nn.Linear or None
        The encoder's output layer (:func:`~ppl_mixtures.inference.gmvae_pretrain.
        last_linear` of ``networks.encoder``).

    Returns
    -------
    bool
        False (and the networks as they were) when the encoder does not end, or the decoder
        does not begin, with such a layer, or when the decoder's outputs change (a user
        module that transforms x before its first layer).
    """
    x_dim = networks.x_dim
    first = _first_linear(networks.decoder)
    if (output is None or output.out_features != 2 * (x_dim + networks.w_dim) or first is None
            or first.in_features != x_dim):
        return False
    turn = rotation.to(first.weight)
    probe = probe.to(first.weight)
    saved = (output.weight.detach().clone(), output.bias.detach().clone(),
             first.weight.detach().clone())
    with torch.no_grad():
        before = networks.decoder(probe)
        output.weight[:x_dim] = turn.T @ output.weight[:x_dim]
        output.bias[:x_dim] = turn.T @ output.bias[:x_dim]
        first.weight.copy_(first.weight @ turn)
        after = networks.decoder(probe @ turn)
        scale = float(before.abs().max()) + 1.0
        if not float((after - before).abs().max()) <= 1e-4 * scale:
            output.weight.copy_(saved[0])
            output.bias.copy_(saved[1])
            first.weight.copy_(saved[2])
            return False
    return True
