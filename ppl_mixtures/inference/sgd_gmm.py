"""Max-component SGD training of a Gaussian mixture with annealing (Gepperth & Pfülb 2021).

Equation, section and appendix numbers below are those of the paper's preprint; see
``docs/references.md``.

Plain torch, no Pyro: the mixture is trained by minibatch gradient descent on an upper bound of
the negative log-likelihood, from a tiny random initial point (no k-means).

Objectives, for a minibatch of B samples and ``log_joint[n, k] = log pi_k + log p(x_n | k)``:

- the negative log-likelihood (eq. 1), reported, never differentiated::

      L = -1/B sum_n logsumexp_k log_joint[n, k]

- the max-component bound (eq. 2), ``L_MC >= L`` since one term bounds the sum::

      L_MC = -1/B sum_n max_k log_joint[n, k]

- the smoothed max-component loss (eq. 7) that is minimised: the K components sit on a 1-D or
  2-D grid, and the log-joints are smoothed with a Gaussian filter ``g_k`` over the grid
  (eq. 8, rows normalised to sum to one)::

      L_sMC = -1/B sum_n max_k sum_j g[k, j] log_joint[n, j]

  Since ``sum_j g[k, j] a_j <= max_j a_j``, ``L_sMC >= L_MC >= L`` at every step. The filter's
  width ``sigma(t)`` follows eq. 9: ``sigma0`` until step ``t0``, then an exponential decay to
  ``sigma_inf`` at step ``t_inf``, where ``g`` is the identity to machine precision and
  ``L_sMC = L_MC``. Wide filters punish the single-component and degenerate solutions
  (section 3.3): all neighbours on the grid are pulled along with the winner, as in a SOM.

Parameters and constraints (section 3.2):

- weights ``pi = softmax(xi)`` (eq. 3), ``xi`` free, started at 0 (equiprobable);
- means started uniform in ``[-mu_init, mu_init]``;
- spreads: the trainer steps on inverse standard deviations ``1/sigma`` (per component and
  feature for ``"diag"``, per component for ``"spherical"``) and clips them after every step
  so that every standard deviation stays ``>= sigma_min`` (the Sigma_min clipping of the paper; the
  variance floor is ``sigma_min**2``). A step on ``1/sigma`` is multiplicative, ``1/sigma <-
  1/sigma * (1 - lr * (x - mu)**2) + lr * sigma``, so it stays stable for unit-scale data,
  where a step of the same size on a variance overshoots (at the floor, one sample at
  distance 1 would move a variance from 0.0225 to 10.6). All spreads start at ``sigma_min``;
- ``"principal"``: local principal directions (section 3.5, eq. 11). Component k keeps S
  orthonormal directions ``d_ks`` (the rows of ``directions[k]``, re-orthonormalised by QR
  after every step) with one inverse standard deviation each, and, when ``S < D``, one more
  for the ``D - S`` dimensional complement of their span. The complement term is ours: eq. 11
  alone is no density in D dimensions, so its log-likelihood could not be compared with the
  diagonal model or with EM. With ``S = D`` the model is a full-covariance mixture.

Updates are eq. 10: ``theta <- theta - lr * lambda_group * grad`` with one adaptation strength
per group (weights, means, spreads; the directions share the spreads' strength).

Data should be of unit scale, as the paper's images in [0, 1]: the defaults (``sigma_min=0.15``,
``lr=0.011``, ``mu_init=0.01``) are in data units, and a first step is stable while
``lr * (x - mu)**2 < 1``, i.e. ``|x| < 1 / sqrt(lr)`` (about 9.5) near the initial means.

Measured behaviour (float64, B = 1, seeds 0-2; see ``tests/test_sgd_gmm.py`` and
``bench/sgd_gmm.py``): on digits scaled to [0, 1] annealing is what spreads the components
(K = 16: all used, against a single one with annealing off). On 4 separated clusters in 50-D
SGD from the tiny start matches EM (ARI 0.99-1.0, log-likelihood within 0.3 % with
``lr_final``). In few dimensions with K equal to the true number of clusters it is weaker
than k-means-started EM: 9 clusters in 2-D or 10-D ended with merged clusters (ARI 0.55-0.86,
EM 0.86-1.0), and 16 clusters in 5-D with all components at the data mean (the degenerate
solution of section 3.3, which the filter did not prevent there).

Example
-------
>>> trainer = SGDGMMTrainer(25, SGDConfig(batch_size=1), seed=0)  # doctest: +SKIP
>>> trainer.fit(x, n_epochs=3)  # doctest: +SKIP
>>> trainer.history["max_component_loss"][-1], trainer.to_gmm_params()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sized
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ppl_mixtures._progress import progress_bar
from ppl_mixtures.models import gmm
from ppl_mixtures.models.missing import gmm_component_log_prob, has_missing

#: Covariance structures the trainer supports.
SGD_COVARIANCE_TYPES = ("diag", "spherical", "principal")
#: Inverse standard deviations never fall below this (a standard deviation of 1e6 data units).
_MIN_INV_STD = 1e-6


@dataclass
class SGDConfig:
    """Hyper-parameters of max-component SGD; the defaults are Gepperth & Pfülb's (section 4).

    Attributes
    ----------
    lr : float, default 0.011
        Learning rate epsilon of eq. 10 (plain gradient steps on the minibatch mean loss).
    lr_final : float or None, default None
        Ours, not the paper's: when set, the learning rate decays geometrically from ``lr``
        at ``t_inf`` to ``lr_final`` at ``T`` (and stays there), once annealing is over.
        With a constant rate, B = 1 steps leave the means jittering about the optimum
        (a step moves a winning mean ``lr / sigma^2`` of the way to the sample); the decay
        removes that noise floor. None keeps the paper's constant rate.
    batch_size : int or None, default 1
        Samples per gradient step; None takes each given batch whole (one step per batch).
    sigma0 : float or None, default None
        Width of the grid filter (eq. 8) before ``t0``, in grid units. None: the paper's rule
        of thumb ``n / 3`` for an ``n x n`` grid (App. C, step 4; ``K / 3`` on a 1-D grid),
        1.67 for K = 25. Section 4 used 1.2 for 5 x 5; on scikit-learn's digits (scaled to
        [0, 1], K = 25, B = 1, 8 epochs, seeds 0-2) 1.2 left 15 of the 25 components unused
        and ended 4.7-5.1 nats per sample worse than n / 3, which used all of them.
        ``sigma0 = sigma_inf + 0.001`` turns annealing off (section 4.2).
    sigma_inf : float, default 0.011
        Width from ``t_inf`` on (eq. 9); at 0.011 the filter is the identity.
    t0, t_inf : float, default 0.3 and 0.8
        Start and end of the decay of eq. 9, as fractions of ``total_steps``.
    total_steps : int or None
        The annealing horizon T in gradient steps. None: the number of steps of the run
        (``fit``), or the paper's ``1000 * sqrt(K)`` for a stream of ``partial_fit`` calls.
    sigma_min : float, default 0.15
        Smallest standard deviation (Sigma_min of section 3.2), in data units.
    mu_init : float, default 0.01
        Means start uniform in ``[-mu_init, mu_init]``.
    lambda_pi, lambda_mu, lambda_sigma : float, default 1.0
        Adaptation strengths in [0, 1] of weights, means and spreads (eq. 10); 0 freezes a
        group.
    grid_shape : tuple of int, optional
        ``(rows, cols)`` or ``(K,)`` with product K. None: a square grid when K is a perfect
        square (25 -> 5 x 5), else a 1-D grid of K.
    shuffle : bool, default True
        ``fit`` on a tensor draws a new permutation every epoch; batches from an iterable and
        ``partial_fit`` are taken in the order given.
    """

    lr: float = 0.011
    lr_final: float | None = None
    batch_size: int | None = 1
    sigma0: float | None = None
    sigma_inf: float = 0.011
    t0: float = 0.3
    t_inf: float = 0.8
    total_steps: int | None = None
    sigma_min: float = 0.15
    mu_init: float = 0.01
    lambda_pi: float = 1.0
    lambda_mu: float = 1.0
    lambda_sigma: float = 1.0
    grid_shape: tuple[int, ...] | None = None
    shuffle: bool = True

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def validate(self, n_components: int, prefix: str = "") -> None:
        """Raise ``ValueError`` naming the first bad field (as ``{prefix}{field}``)."""

        def fail(name: str, rule: str) -> None:
            raise ValueError(f"{prefix}{name}={getattr(self, name)!r} {rule}")

        def real(value: Any) -> bool:
            return isinstance(value, numbers.Real) and not isinstance(value, bool) and (
                math.isfinite(value))

        for name in ("lr", "lr_final", "sigma0", "sigma_inf", "sigma_min"):
            value = getattr(self, name)
            if not (real(value) and value > 0) and not (
                name in ("sigma0", "lr_final") and value is None
            ):
                fail(name, "must be a positive number")
        if not (real(self.mu_init) and self.mu_init >= 0):
            fail("mu_init", "must be a non-negative number")
        for name in ("lambda_pi", "lambda_mu", "lambda_sigma"):
            if not (real(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                fail(name, "must be a number in [0, 1] (eq. 10 of Gepperth & Pfülb 2021)")
        for name in ("t0", "t_inf"):
            if not (real(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                fail(name, "must be a fraction of total_steps in [0, 1]")
        if self.t0 > self.t_inf:
            fail("t0", f"must be <= t_inf={self.t_inf!r} (the decay runs from t0 to t_inf)")
        if self.sigma0 is not None and self.sigma0 < self.sigma_inf:
            fail("sigma0", f"must be >= sigma_inf={self.sigma_inf!r} (sigma decays)")
        for name in ("batch_size", "total_steps"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
            ):
                fail(name, "must be an integer >= 1 or None")
        if not isinstance(self.shuffle, bool):
            fail("shuffle", "must be True or False")
        if self.grid_shape is not None:
            shape = self.grid_shape
            ok = (
                isinstance(shape, (tuple, list)) and len(shape) in (1, 2)
                and all(isinstance(s, numbers.Integral) and s >= 1 for s in shape)
                and math.prod(shape) == n_components
            )
            if not ok:
                fail("grid_shape", f"must be (rows, cols) or (K,) with product "
                                   f"n_components={n_components}")


def default_grid_shape(n_components: int) -> tuple[int, ...]:
    """The paper's grid: ``(n, n)`` when ``K = n**2``, else ``(K,)`` (section 3.3)."""
    side = math.isqrt(n_components)
    return (side, side) if side * side == n_components else (n_components,)


def grid_squared_distances(grid_shape: tuple[int, ...]) -> Tensor:
    """Squared distances ``||c(k) - c(j)||^2`` between grid coordinates, shape (K, K), float64."""
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid_shape],
                          indexing="ij")
    coords = torch.stack([a.reshape(-1) for a in axes], dim=1)  # (K, grid dims), row-major
    return (coords[:, None, :] - coords[None, :, :]).square().sum(-1)


def smoothing_filter(squared_distances: Tensor, sigma: float) -> Tensor:
    """The grid filters ``g_k`` of eq. 8, rows normalised to one, shape (K, K).

    Row k is ``exp(-||c(k) - c(j)||^2 / (2 sigma^2))`` over j, divided by its sum. Entries
    below ``exp(-50)`` (2e-22, under float64's resolution next to the diagonal's 1) are set to
    zero: left alone they become subnormal numbers as sigma shrinks, and arithmetic on those
    was measured 10x slower than the rest of a training step.
    """
    exponent = -squared_distances / (2.0 * sigma * sigma)
    weights = torch.where(exponent < -50.0, 0.0, exponent.exp())
    return weights / weights.sum(1, keepdim=True)


def annealing_sigma(step: int, total_steps: int, sigma0: float, sigma_inf: float,
                    t0: float, t_inf: float) -> float:
    """Filter width ``sigma(t)`` of eq. 9 at gradient step ``t = step`` of ``T = total_steps``.

    ``sigma0`` up to ``t0 * T``, ``sigma_inf`` from ``t_inf * T`` on, and ``sigma0 *
    exp(-tau (t - t0 T))`` between, with ``tau = log(sigma0 / sigma_inf) / ((t_inf - t0) T)``
    so that the decay meets both ends (the paper prints ``exp(-tau t)``, which would jump at
    ``t0``).
    """
    start, end = t0 * total_steps, t_inf * total_steps
    if step <= start:
        return sigma0
    if step >= end:
        return sigma_inf
    tau = math.log(sigma0 / sigma_inf) / (end - start)
    return sigma0 * math.exp(-tau * (step - start))


def _first_tensor(batch: Any) -> Tensor:
    """A loader's batch: the tensor itself, or the first of ``(x, y, ...)``."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class StepRecord(NamedTuple):
    """Per-sample objectives of one minibatch at the parameters before its update.

    ``loss >= max_component_loss >= nll`` always holds (up to rounding).
    """

    loss: float
    """Smoothed max-component loss, eq. 7 (what the step minimises)."""
    max_component_loss: float
    """Max-component loss, eq. 2."""
    nll: float
    """Negative log-likelihood, eq. 1."""
    sigma: float
    """Filter width sigma(t) of eq. 9 at this step."""
    n_samples: float
    """Rows of the minibatch (the sum of their weights in a weighted fit)."""


class SGDGMMTrainer:
    """Max-component SGD with annealing for a Gaussian mixture (Gepperth & Pfülb 2021).

    Parameters
    ----------
    n_components : int
        K.
    config : SGDConfig, optional
        Hyper-parameters; the paper's defaults when omitted.
    covariance_type : {"diag", "spherical", "principal"}, default "diag"
    n_principal_directions : int, optional
        S for ``"principal"``; None means S = D (a full covariance).
    seed : int, default 0
        Seeds the initial means and directions and the per-epoch permutations (a CPU
        generator of the trainer's own, so results do not depend on the device).
    progress : bool, default False
        A tqdm bar over epochs in :meth:`fit` (only on a terminal).
    init : dict of str to Tensor, optional
        Initial ``weights`` (K,), ``means`` (K, D) and/or ``variances`` ((K, D) diag, (K,)
        spherical) replacing the paper's initial values.
    missing : bool, default False
        NaN entries of the data are missing values, integrated out: a row's log-joints are
        those of its observed coordinates (the marginal Gaussian of the observed sub-vector,
        :func:`ppl_mixtures.models.missing.gmm_component_log_prob`), so every objective is
        the masked one and a missing entry adds nothing to any gradient. Batches without
        NaN take the complete-data densities, so complete data train exactly as with False.

    Attributes
    ----------
    n_steps : int
        Gradient steps taken: the annealing clock ``t``.
    history : dict of str to list of float
        Per epoch of :meth:`fit` (per call of :meth:`partial_fit`), means per sample over the
        epoch's steps: ``"loss"`` (eq. 7), ``"max_component_loss"`` (eq. 2), ``"nll"`` (eq. 1)
        and ``"sigma"`` (the filter width at the epoch's last step).
    logits, means, inv_stds, directions, residual_inv_stds : Tensor or None
        The free parameters: ``xi`` (K,), ``mu`` (K, D), inverse standard deviations ((K, D)
        diag, (K,) spherical, (K, S) principal), principal directions (K, S, D) with
        orthonormal rows and the complement's inverse standard deviations (K,) (principal
        with S < D). None before the first batch.
    """

    def __init__(
        self,
        n_components: int,
        config: SGDConfig | None = None,
        *,
        covariance_type: str = "diag",
        n_principal_directions: int | None = None,
        seed: int = 0,
        progress: bool = False,
        init: dict[str, Tensor] | None = None,
        missing: bool = False,
    ) -> None:
        self.missing = missing
        self.config = config or SGDConfig()
        self.config.validate(n_components)
        if covariance_type not in SGD_COVARIANCE_TYPES:
            raise ValueError(f"covariance_type={covariance_type!r} is not one of "
                             f"{SGD_COVARIANCE_TYPES}")
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.n_principal_directions = n_principal_directions
        self.progress = progress
        self.init = init or {}
        self.generator = torch.Generator().manual_seed(int(seed))
        self.grid_shape = tuple(self.config.grid_shape or default_grid_shape(n_components))
        #: The filter width before t0: ``config.sigma0``, or the paper's ``n / 3`` (App. C).
        self.sigma0 = self.config.sigma0 or max(max(self.grid_shape) / 3.0,
                                                self.config.sigma_inf)
        self._grid_distances = grid_squared_distances(self.grid_shape)
        self._filter_cache: tuple[float, Tensor | None] | None = None
        self.n_steps = 0
        self.total_steps = self.config.total_steps
        self.history: dict[str, list[float]] = {
            "loss": [], "max_component_loss": [], "nll": [], "sigma": []
        }
        self.logits = self.means = self.inv_stds = None
        self.directions = self.residual_inv_stds = None

    # ---------------------------------------------------------------------- state

    #: Tensors of the trainer's state (None where the covariance type has no such part).
    _STATE_TENSORS = ("logits", "means", "inv_stds", "directions", "residual_inv_stds")

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to continue training exactly where this stopped.

        Returns
        -------
        dict
            The parameters (CPU copies, None before the first batch), the step count and the
            horizon (the annealing clock), the history, the shuffling RNG's state and the
            number of principal directions.
        """
        return {
            "tensors": {name: None if getattr(self, name) is None
                        else getattr(self, name).detach().cpu().clone()
                        for name in self._STATE_TENSORS},
            "n_steps": self.n_steps,
            "total_steps": self.total_steps,
            "history": {name: list(values) for name, values in self.history.items()},
            "generator": self.generator.get_state(),
            "n_principal_directions": self.n_principal_directions,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore a :meth:`state_dict` (from a trainer with the same configuration).

        Parameters
        ----------
        state : dict
        device : torch.device or str
            Where the parameters go (the data's device).
        """
        for name in self._STATE_TENSORS:
            value = state["tensors"][name]
            setattr(self, name, None if value is None else value.to(device).clone())
        self.n_steps = state["n_steps"]
        self.total_steps = state["total_steps"]
        self.history = {name: list(values) for name, values in state["history"].items()}
        self.generator.set_state(state["generator"])
        self.n_principal_directions = state["n_principal_directions"]
        self._filter_cache = None

    # ---------------------------------------------------------------------- parameters

    @property
    def initialized(self) -> bool:
        return self.means is not None

    @property
    def max_inv_std(self) -> float:
        """``1 / sigma_min``: the clip of every inverse standard deviation."""
        return 1.0 / self.config.sigma_min

    def _uniform(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        draw = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        return draw.to(dtype=like.dtype, device=like.device)

    def initialize(self, like: Tensor) -> None:
        """Create the parameters on ``like``'s device and dtype (shape (n, D) data).

        Weights equiprobable, means uniform in ``[-mu_init, mu_init]``, every standard
        deviation ``sigma_min`` (section 3.4), random orthonormal principal directions.
        """
        k, d = self.n_components, like.shape[1]
        options = {"dtype": like.dtype, "device": like.device}
        self.logits = torch.zeros(k, **options)
        self.means = (2.0 * self._uniform((k, d), like) - 1.0) * self.config.mu_init
        spread_shape = {"diag": (k, d), "spherical": (k,)}.get(self.covariance_type)
        if self.covariance_type == "principal":
            rank = self.n_principal_directions or d
            if not 1 <= rank <= d:
                raise ValueError(f"n_principal_directions={rank} must be in [1, n_features={d}]")
            self.n_principal_directions = rank
            spread_shape = (k, rank)
            gaussian = torch.randn((k, d, rank), generator=self.generator, dtype=torch.float64)
            self.directions = self._orthonormal_rows(gaussian.transpose(1, 2).to(**options))
            if rank < d:
                self.residual_inv_stds = torch.full((k,), self.max_inv_std, **options)
        self.inv_stds = torch.full(spread_shape, self.max_inv_std, **options)
        self._apply_init(options)

    def _apply_init(self, options: dict) -> None:
        if "weights" in self.init:
            self.logits = self.init["weights"].to(**options).log()
        if "means" in self.init:
            self.means = self.init["means"].to(**options).clone()
        if "variances" in self.init:
            self.inv_stds = self.init["variances"].to(**options).rsqrt()
            self._clip_spreads()

    @staticmethod
    def _orthonormal_rows(directions: Tensor) -> Tensor:
        """QR re-orthonormalisation of every component's rows (section 3.5), shape (K, S, D).

        ``D_k^T = Q_k R_k``; the signs of Q's columns are chosen so that ``diag(R_k) > 0``,
        so rows that are already orthonormal come back unchanged.
        """
        q, r = torch.linalg.qr(directions.transpose(1, 2))
        signs = torch.sign(r.diagonal(dim1=-2, dim2=-1))
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return (q * signs[:, None, :]).transpose(1, 2)

    def _clip_spreads(self) -> None:
        """Sigma_min clipping (section 3.2) on the inverse standard deviations, in place."""
        self.inv_stds.clamp_(_MIN_INV_STD, self.max_inv_std)
        if self.residual_inv_stds is not None:
            self.residual_inv_stds.clamp_(_MIN_INV_STD, self.max_inv_std)

    def _free_parameters(self) -> list[Tensor]:
        params = [self.logits, self.means, self.inv_stds]
        if self.directions is not None:
            params.append(self.directions)
        if self.residual_inv_stds is not None:
            params.append(self.residual_inv_stds)
        return params

    def _strengths(self) -> list[float]:
        c = self.config
        return [c.lambda_pi, c.lambda_mu] + [c.lambda_sigma] * (len(self._free_parameters()) - 2)

    # ---------------------------------------------------------------------- densities

    def log_joint(self, x: Tensor, params: list[Tensor] | None = None) -> Tensor:
        """``log pi_k + log p(x_n | k)``, shape (n_samples, K) (differentiable)."""
        logits, means, inv_stds, *rest = params or self._free_parameters()
        log_weights = torch.log_softmax(logits, dim=0)  # eq. 3
        if self.missing and has_missing(x):
            return self._observed_log_prob(x, log_weights, means, inv_stds, *rest) + log_weights
        if self.covariance_type == "principal":
            return self._principal_log_prob(x, means, inv_stds, *rest) + log_weights
        variances = inv_stds.square().reciprocal()
        return gmm.component_log_prob(
            x, gmm.GMMParams(log_weights, means, variances, self.covariance_type)
        ) + log_weights

    def _observed_log_prob(self, x: Tensor, log_weights: Tensor, means: Tensor,
                           inv_stds: Tensor, *rest: Tensor) -> Tensor:
        """``log N(x_n,o | mu_k,o, Sigma_k,oo)`` over each row's observed (non-NaN)
        coordinates, shape (n, K) (differentiable; Ghahramani & Jordan 1994)."""
        if self.covariance_type == "principal":
            params = gmm.GMMParams(log_weights.exp(), means,
                                   principal_covariances(inv_stds, *rest), "full")
        else:
            params = gmm.GMMParams(log_weights.exp(), means, inv_stds.square().reciprocal(),
                                   self.covariance_type)
        return gmm_component_log_prob(x, params).to(means.dtype)

    def _principal_log_prob(self, x: Tensor, means: Tensor, inv_stds: Tensor,
                            directions: Tensor, residual: Tensor | None = None) -> Tensor:
        """Eq. 11 with the complement term: ``log N(x | mu_k, Sigma_k)``, shape (n, K).

        ``Sigma_k = D_k^T diag(1 / inv_stds_k^2) D_k + (I - D_k^T D_k) / residual_k^2``.
        """
        k, rank, d = directions.shape
        center = means.mean(0)
        xc, mc = x - center, means - center
        projected = (xc @ directions.reshape(k * rank, d).T).view(-1, k, rank)
        projected = projected - (directions @ mc[:, :, None]).squeeze(-1)  # d_ks . (x - mu_k)
        quad = (projected.square() * inv_stds.square()).sum(-1)
        log_det = inv_stds.log().sum(-1)  # log |Sigma_k^-1/2|
        if residual is not None:
            sq_norm = ((xc * xc).sum(1, keepdim=True) - 2.0 * xc @ mc.T
                       + (mc * mc).sum(1)).clamp_min(0.0)
            outside = (sq_norm - projected.square().sum(-1)).clamp_min(0.0)
            quad = quad + outside * residual.square()
            log_det = log_det + (d - rank) * residual.log()
        return log_det - 0.5 * (d * math.log(2 * math.pi) + quad)

    def _smoothing(self, sigma: float) -> Tensor | None:
        """Eq. 8 at width ``sigma`` on the parameters' device and dtype, transposed for a
        right product; None when it is the identity to machine precision."""
        if self._filter_cache is None or self._filter_cache[0] != sigma:
            filt = smoothing_filter(self._grid_distances, sigma)
            off_diagonal = filt - torch.diag_embed(filt.diagonal())
            if bool((off_diagonal == 0).all()):
                self._filter_cache = (sigma, None)
            else:
                self._filter_cache = (sigma, filt.T.to(self.means).contiguous())
        return self._filter_cache[1]

    def objectives(self, x: Tensor, sigma: float | None = None) -> dict[str, Tensor]:
        """The three per-sample objectives at the current parameters (no gradients).

        Parameters
        ----------
        x : Tensor, shape (n_samples, n_features)
        sigma : float, optional
            Filter width of eq. 7; the current ``sigma(t)`` when omitted.

        Returns
        -------
        dict with ``"loss"`` (eq. 7), ``"max_component_loss"`` (eq. 2) and ``"nll"`` (eq. 1),
        each a Tensor of shape (n_samples,)
        """
        filt = self._smoothing(self.sigma if sigma is None else sigma)
        rank = self.directions.shape[1] if self.directions is not None else 1
        rows = max(1, (1 << 22) // (self.n_components * rank))  # bounds the (n, K, S) table
        parts: dict[str, list[Tensor]] = {"loss": [], "max_component_loss": [], "nll": []}
        with torch.no_grad():
            for chunk in torch.split(x, rows):
                log_joint = self.log_joint(chunk)
                smoothed = log_joint if filt is None else log_joint @ filt
                parts["loss"].append(-smoothed.amax(1))
                parts["max_component_loss"].append(-log_joint.amax(1))
                parts["nll"].append(-torch.logsumexp(log_joint, 1))
        return {name: torch.cat(values) for name, values in parts.items()}

    @property
    def sigma(self) -> float:
        """The filter width ``sigma(t)`` at the current step (eq. 9)."""
        c = self.config
        return annealing_sigma(self.n_steps, self.total_steps or 1, self.sigma0, c.sigma_inf,
                               c.t0, c.t_inf)

    @property
    def lr(self) -> float:
        """The learning rate at the current step: ``config.lr``, decaying to ``lr_final``."""
        c = self.config
        if c.lr_final is None or self.total_steps is None:
            return c.lr
        return annealing_sigma(self.n_steps, self.total_steps, c.lr, c.lr_final, c.t_inf, 1.0)

    @property
    def annealing_done(self) -> bool:
        """True from step ``t_inf * T`` on, where the loss is eq. 2 itself."""
        return self.total_steps is not None and (
            self.n_steps >= self.config.t_inf * self.total_steps)

    # ---------------------------------------------------------------------- training

    def step(self, x: Tensor, weights: Tensor | None = None,
             mean_weight: float | None = None) -> StepRecord:
        """One gradient step (eq. 10) on the minibatch ``x`` of shape (B, D).

        Minimises the smoothed loss of eq. 7 at ``sigma(t)``, then clips the spreads
        (Sigma_min) and re-orthonormalises the principal directions. With sample ``weights``
        (shape (B,)) the step minimises ``sum_n w_n l_n / (B mean_weight)``, ``mean_weight``
        being the mean weight of all the data (default: of this minibatch): on the whole
        data that is the mean loss of the rows repeated as the integer weights say, and a
        minibatch gives an unbiased estimate of it. The record holds the weighted means.
        """
        if not self.initialized:
            self.initialize(x)
        sigma, lr = self.sigma, self.lr
        filt = self._smoothing(sigma)
        params = [p.detach().requires_grad_(True) for p in self._free_parameters()]
        with torch.enable_grad():
            log_joint = self.log_joint(x, params)
            smoothed = log_joint if filt is None else log_joint @ filt
            if weights is None:
                loss = -smoothed.amax(1).mean()
            else:
                scale = x.shape[0] * (mean_weight if mean_weight is not None
                                      else float(weights.mean()))
                loss = -(weights @ smoothed.amax(1)) / scale
            grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            log_joint = log_joint.detach()
            if weights is None:
                record = StepRecord(
                    float(loss), float(-log_joint.amax(1).mean()),
                    float(-torch.logsumexp(log_joint, 1).mean()), sigma, x.shape[0],
                )
            else:
                total = float(weights.sum())
                per_row = (-smoothed.detach().amax(1), -log_joint.amax(1),
                           -torch.logsumexp(log_joint, 1))
                means = [float(weights @ v) / total if total > 0 else 0.0 for v in per_row]
                record = StepRecord(*means, sigma, total)
            for param, grad, strength in zip(
                self._free_parameters(), grads, self._strengths(), strict=True
            ):
                param.sub_(grad, alpha=lr * strength)
            self._clip_spreads()
            if self.directions is not None:
                self.directions = self._orthonormal_rows(self.directions)
        self.n_steps += 1
        return record

    def _minibatches(self, x: Tensor, shuffle: bool) -> list[Tensor]:
        size = self.config.batch_size or x.shape[0]
        if shuffle:
            x = x[torch.randperm(x.shape[0], generator=self.generator).to(x.device)]
        return list(torch.split(x, size))

    def _run(self, x: Tensor, shuffle: bool, weights: Tensor | None = None) -> list[StepRecord]:
        if weights is None:
            return [self.step(batch) for batch in self._minibatches(x, shuffle)]
        # the rows and their weights, permuted together (one draw, as unweighted)
        pairs = self._minibatches(torch.cat([x, weights[:, None].to(x.dtype)], 1), shuffle)
        mean_weight = float(weights.mean())
        return [self.step(pair[:, :-1], pair[:, -1], mean_weight) for pair in pairs]

    def _record(self, records: list[StepRecord]) -> None:
        total = sum(r.n_samples for r in records)
        if total == 0:  # every row of the pass had weight 0: nothing to average
            total = 1.0
        for name in ("loss", "max_component_loss", "nll"):
            value = sum(getattr(r, name) * r.n_samples for r in records) / total
            self.history[name].append(value)
        self.history["sigma"].append(records[-1].sigma)

    def partial_fit(self, x: Tensor, weights: Tensor | None = None) -> SGDGMMTrainer:
        """One pass of minibatch steps over ``x`` (in order), advancing the annealing clock.

        The horizon T is ``config.total_steps``, else the paper's ``1000 * sqrt(K)`` steps.
        Appends one entry to every list of :attr:`history`.

        Parameters
        ----------
        x : Tensor, shape (n_samples, n_features)
        weights : Tensor, shape (n_samples,), optional
            Sample weights of the rows (see :meth:`step`).
        """
        if self.total_steps is None:
            self.total_steps = int(round(1000 * math.sqrt(self.n_components)))
        self._record(self._run(x, shuffle=False, weights=weights))
        return self

    def steps_per_epoch(self, data: Any) -> int | None:
        """Gradient steps in one pass over ``data``; None where it cannot be known ahead.

        ``data`` is a tensor or array (cut into ``config.batch_size`` rows), a list or tuple
        of batches, or another sized iterable of batches: one step per batch when
        ``batch_size`` is None, else ``len(data) * ceil(data.batch_size / batch_size)`` for a
        ``DataLoader`` (exact unless its last batch is short).
        """
        size = self.config.batch_size

        def steps(n_rows: int) -> int:
            return 1 if size is None else math.ceil(n_rows / size)

        if hasattr(data, "shape"):
            return steps(data.shape[0])
        if isinstance(data, (list, tuple)):
            return sum(steps(len(batch)) for batch in data)
        if isinstance(data, Sized):
            if size is None:
                return len(data)
            loader_batch = getattr(data, "batch_size", None)
            if loader_batch:
                return len(data) * steps(loader_batch)
        return None

    def set_horizon(self, data: Tensor | Iterable[Tensor], n_epochs: int) -> None:
        """Set ``total_steps`` (the annealing horizon) to ``n_epochs`` passes over ``data``.

        Raises
        ------
        ValueError
            When ``data`` is an iterable without ``len()``.
        """
        per_epoch = self.steps_per_epoch(data)
        if per_epoch is None:
            raise ValueError(
                "the annealing horizon is unknown for an iterable without len(); set "
                "total_steps in the SGD configuration (GaussianMixture: "
                "sgd_options={'total_steps': ...}, gradient steps in all)"
            )
        self.total_steps = per_epoch * n_epochs

    def fit(self, data: Tensor | Iterable[Tensor], n_epochs: int = 1,
            weights: Tensor | None = None, weighted_batches: bool = False) -> SGDGMMTrainer:
        """``n_epochs`` passes over ``data``, one :attr:`history` entry per pass.

        Parameters
        ----------
        data : Tensor of shape (n_samples, n_features), or an iterable of such batches
            A tensor is cut into minibatches of ``config.batch_size`` (a new permutation
            every epoch when ``config.shuffle``); each batch of an iterable (a list, a
            ``torch.utils.data.DataLoader``) is cut likewise, in the order given. An iterable
            is traversed once per epoch, so it must be re-iterable when ``n_epochs > 1``.
        n_epochs : int, default 1
        weights : Tensor, shape (n_samples,), optional
            Sample weights of the rows of a tensor ``data`` (see :meth:`step`).
        weighted_batches : bool, default False
            Every batch of an iterable is a pair ``(x, w)`` of rows and their weights.

        Raises
        ------
        ValueError
            When the annealing horizon is unknown (no ``config.total_steps`` and an iterable
            without length), or a one-shot iterator is asked for several epochs.
        """
        if self.total_steps is None:
            self.set_horizon(data, n_epochs)
        if n_epochs > 1 and not isinstance(data, Tensor) and iter(data) is data:
            raise ValueError("a one-shot iterator cannot be traversed for n_epochs > 1; pass "
                             "a list or a DataLoader, or n_epochs=1")
        with progress_bar(total=n_epochs, enabled=self.progress, desc="GMM SGD") as bar:
            for _ in range(n_epochs):
                if isinstance(data, Tensor):
                    records = self._run(data, shuffle=self.config.shuffle, weights=weights)
                elif weighted_batches:
                    records = [r for batch, batch_weights in data
                               for r in self._run(batch, False, batch_weights)]
                else:
                    records = [r for batch in data
                               for r in self._run(_first_tensor(batch), shuffle=False)]
                if not records:
                    raise ValueError("the data yielded no batch")
                self._record(records)
                bar.update(1)
                bar.set_postfix(loss=f"{self.history['max_component_loss'][-1]:.4g}")
        return self

    # ---------------------------------------------------------------------- results

    def variances(self) -> Tensor:
        """Diagonal variances (K, D) or spherical variances (K,) (not for principal)."""
        return self.inv_stds.square().reciprocal()

    def covariance_matrices(self) -> Tensor:
        """Full covariances ``Sigma_k`` implied by the parameters, shape (K, D, D)."""
        if self.covariance_type != "principal":
            variances = self.variances()
            if variances.dim() == 1:
                variances = variances[:, None].expand(self.means.shape)
            return torch.diag_embed(variances)
        return principal_covariances(self.inv_stds, self.directions, self.residual_inv_stds)

    def to_gmm_params(self) -> gmm.GMMParams:
        """The mixture as :class:`~ppl_mixtures.models.gmm.GMMParams`.

        ``"diag"`` and ``"spherical"`` keep their type; ``"principal"`` becomes ``"full"``
        with the covariances of :meth:`covariance_matrices`.
        """
        if not self.initialized:
            raise RuntimeError("the trainer has seen no data yet")
        with torch.no_grad():
            weights = torch.softmax(self.logits, 0)
            if self.covariance_type == "principal":
                return gmm.GMMParams(weights, self.means.clone(), self.covariance_matrices(),
                                     "full")
            return gmm.GMMParams(weights, self.means.clone(), self.variances(),
                                 self.covariance_type)

    def n_parameter_elements(self) -> int:
        """Number of stored parameter values (the memory of the model, section 3.5)."""
        return sum(p.numel() for p in self._free_parameters())


def principal_covariances(inv_stds: Tensor, directions: Tensor,
                          residual_inv_stds: Tensor | None = None) -> Tensor:
    """``Sigma_k = D_k^T diag(1 / inv_stds_k^2) D_k + (I - D_k^T D_k) / residual_k^2``.

    Parameters
    ----------
    inv_stds : Tensor, shape (K, S)
    directions : Tensor, shape (K, S, D), orthonormal rows
    residual_inv_stds : Tensor, shape (K,), optional
        The complement's inverse standard deviations (S < D); None when S = D.

    Returns
    -------
    Tensor, shape (K, D, D) (differentiable)
    """
    along = directions.transpose(1, 2) @ (inv_stds.square().reciprocal()[:, :, None]
                                          * directions)
    if residual_inv_stds is None:
        return along
    eye = torch.eye(directions.shape[-1], dtype=directions.dtype, device=directions.device)
    complement = eye - directions.transpose(1, 2) @ directions
    return along + complement / residual_inv_stds.square()[:, None, None]


__all__ = [
    "SGDConfig",
    "SGDGMMTrainer",
    "StepRecord",
    "annealing_sigma",
    "default_grid_shape",
    "grid_squared_distances",
    "principal_covariances",
    "smoothing_filter",
]
