"""scikit-learn style estimator for the deep Gaussian mixture (Viroli & McLachlan 2019;
Selosse et al. 2020, section 2).

:class:`DeepGaussianMixture` builds the Pyro model of :mod:`ppl_mixtures.models.dgmm` and fits
it by exact EM (:mod:`ppl_mixtures.inference.em.dgmm`) or by SVI. Clusters are the *paths*
of the network (the global GMM of eq. 3), numbered row-major with ``s_1`` slowest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro
import torch

from ppl_mixtures._rng import keeps_global_rng
from ppl_mixtures.estimators._base import MixtureEstimator
from ppl_mixtures.estimators._dgmm_fit import (  # noqa: F401 (re-exported)
    AUTO_ROWS_PER_PARAMETER,
    DEFAULT_ACCELERATE,
    DGMMChecks,
    DGMMFitting,
    _as_int_tuple,
)
from ppl_mixtures.estimators._sources import DataSource
from ppl_mixtures.estimators._validation import (
    BOOLEAN,
    COMMON_CONSTRAINTS,
    DICT,
    NONE,
    Integer,
    IntegerSequence,
    Options,
    Real,
)
from ppl_mixtures.inference.init import INIT_METHODS
from ppl_mixtures.models import dgmm
from ppl_mixtures.models.dgmm_identify import CONSTRAINTS, identify

INFERENCE_METHODS = ("em", "svi")
#: Starts of :class:`DeepGaussianMixture` (``start``).
STARTS = ("auto", "gmm", "layerwise")


class DeepGaussianMixture(DGMMChecks, DGMMFitting, MixtureEstimator):
    """Deep Gaussian mixture (stacked mixtures of factor analysers) fitted by EM or SVI.

    Layers ``l = 1..h``: ``z^(l-1) = eta^(l)_{s_l} + Lambda^(l)_{s_l} z^(l) + u^(l)`` with
    ``x = z^(0)`` and ``z^(h) ~ N(0, I)`` (Selosse et al. 2020, eq. 1). Marginally a Gaussian mixture over
    the ``P = prod_l G_l`` paths (eqs. 3-6); :meth:`predict` returns the path.

    Parameters
    ----------
    n_components : sequence of int, default (3, 3, 2)
        ``(G_1, ..., G_h)``: components per layer.
    n_factors : sequence of int, default (11, 6, 2)
        ``(r_1, ..., r_h)``, strictly decreasing and below ``n_features``.
    inference : {"em", "svi"}, default "em"
        ``"em"``: exact monotone EM over all layers (expectations, not sampled scores; see
        :mod:`ppl_mixtures.inference.em.dgmm`), in memory or out of core: :meth:`fit` on a
        stream of batches (a ``DataLoader``, a list of arrays) runs one pass over the
        batches per EM iteration (and per annealing step), adding up the E-step's
        sufficient statistics; the layer-wise start is drawn from the first batch.
        ``"svi"``: MAP by ``TraceEnum_ELBO`` over the Pyro model (layers' labels enumerated).
    form : {"collapsed", "latent"}, default "collapsed"
        SVI only: scores integrated out, or sampled with a local Gaussian guide
        (:class:`~ppl_mixtures.models.dgmm.LatentScoreGuide`; a lower bound, for small data).
    n_init : int, default 1
        Restarts from independent initialisations; the best final objective is kept.
    max_iter : int, optional
        EM iterations (default 30 of the accelerated loop, ``accelerate=None``; 500 of plain
        EM; 0 returns the start, annealed if asked) or SVI steps (default 2000). EM and SVI
        warn (``sklearn.exceptions.ConvergenceWarning``) when they stop here short of ``tol``.
    tol : float, optional
        EM: change of the mean log-likelihood per sample over one iteration (default 1e-2 for
        the accelerated loop's 10 cycles, 1e-5 for plain EM). SVI: relative change of the
        smoothed loss (default 1e-6). 0: run ``max_iter``.
    start : {"auto", "gmm", "layerwise"}, default "auto"
        How each restart begins (EM and SVI). ``"auto"``: ``"gmm"`` when the data (the first
        batch of a stream, rank 0's shard) hold at least ``4 P (n_features + 1)`` rows
        (``P = prod G_l``: enough for each path's full covariance), else ``"layerwise"``.
        On scikit-learn's wine data (178 rows, 13 features) with ``(3, 2)`` that is the
        layer-wise start, which keeps the cultivars (first-layer ARI 0.88-0.96) that a
        6-component full mixture of 178 rows does not (0.28-0.76).

        ``"gmm"`` (:func:`~ppl_mixtures.inference.dgmm_start.best_start`): fit the data's own
        full Gaussian mixture with ``prod G_l`` components (best of 3 k-means++ starts), map
        its components onto the tree of paths (components whose mean and covariance
        differences share an ``r_l``-dimensional column space form a component of layer l;
        each group's scores are whitened and rotated onto one frame by matching its
        components' score moments), keep the best of two such trees after three
        accelerated EM cycles, then twice regrow the layers above the first from its scores
        (:func:`~ppl_mixtures.inference.dgmm_start.regrow`), keeping the most likely. On
        fresh draws of the section 3.1 setting of Selosse et al. (2020) it finds the paths
        (ARI 0.92-1.0) where the layer-wise start does not (0.5-0.6; ``bench/RESULTS.md``).

        ``"layerwise"``: the paper's start
        (:func:`~ppl_mixtures.inference.em.dgmm.initial_params`): cluster each layer's input
        with ``init_params``, fit a PPCA per cluster, pass the scores up. With
        ``accelerate=None`` this is plain EM, as in the paper.

        Drawn from the first batch of a stream, and on rank 0 when distributed. With fewer
        than ``2 prod G_l`` rows there, or when that mixture is degenerate, the layer-wise
        start is used.
    accelerate : int, optional
        EM only. None (default, unless ``start="layerwise"``): every EM iteration is 10
        cycles of monotone squared-extrapolation EM (SQUAREM,
        :func:`~ppl_mixtures.inference.em.dgmm.squarem_m_step`, three E-steps each), with
        their own defaults ``max_iter=30`` and ``tol=1e-2`` (the gain over 10 cycles); on
        fresh draws of the section 3.1 setting of Selosse et al. (2020) plain EM creeps
        (noise variances of a deeper layer shrinking a little at each step) and never meets
        its tol within 500 iterations, while these cycles stop at a higher likelihood
        (``bench/RESULTS.md``). An int k: k SQUAREM cycles
        (:func:`~ppl_mixtures.inference.em.dgmm.accelerate`) between the start (and
        annealing) and plain EM, not counted in ``max_iter`` nor ``history_``; 0 is plain EM
        (the default with ``start="layerwise"``, as in the paper). On an iterator (read
        once) EM is plain.
    init_params : {"kmeans", "random", "k-means++", "random_from_data"}, default "kmeans"
        Clustering of the layer-wise start (``start="layerwise"``).
    reg_covar : float, default 1e-6
        Floor on every noise variance (EM).
        Scaled down with the data when its mean per-feature variance is below 1e-3 (a
        ``DataScaleWarning`` says so).
    final_reg_covar : float or None, default 1e-8
        The accelerated loop's floor once its search has stopped (``accelerate=None`` with
        a mixture start, ``tol > 0``): the loop then runs again from the settled fit with
        the noise variances floored at ``final_reg_covar`` instead of ``reg_covar``, its
        iterations appended to ``history_`` (at least 3, or what the search left of
        ``max_iter``; :meth:`~ppl_mixtures.estimators._dgmm_fit.DGMMFitting._release_floor`). On
        the section 3.1 setting of Selosse et al. (2020), standardised, most true
        first-layer noise variances lie below 1e-6: EM started at the true parameters stops
        about 1.5 nats per point below them with the floor 1e-6, and reaches them with
        1e-8, while a whole search at 1e-8 lands in poorer maxima (``bench/RESULTS.md``).
        None (or a value not below ``reg_covar``): ``reg_covar`` throughout. Plain EM
        (``accelerate`` an int, ``start="layerwise"``) and SVI do not use it.
    anneal_start : float, default 1.0
        EM only. With a value T0 > 1, each start first runs ``anneal_iter`` deterministic-
        annealing steps (path responsibilities ``p(s | x)^(1/T)``, T from T0 down to 1; see
        :func:`~ppl_mixtures.inference.em.dgmm.anneal`), then plain monotone EM. On held-out
        draws of the section 3.1 setting of Selosse et al. (2020), T0=5 raised the mean path ARI from 0.52 to
        0.58 and kept more paths non-empty; on wine it found higher likelihoods whose first
        layer matched the cultivars less well (``bench/RESULTS.md``). 1.0: no annealing.
        Works on streams (one pass per tempered step; not on an iterator, read once) and
        with ``distributed=True`` (tempered statistics summed over ranks).
    anneal_iter : int, default 150
        Tempered steps when ``anneal_start > 1``; not counted in ``max_iter`` nor ``history_``.
    realign : bool, default False
        EM only. Each start is first fitted (annealing if asked, then EM), then its first
        layer is kept and the layers above restart from the first layer's scores put in one
        frame (:func:`~ppl_mixtures.inference.em.dgmm.realign_scores`), then EM runs again
        (``history_`` holds this second run). Doubles the cost of a start. With annealing, it
        raised the mean path ARI on held-out section 3.1 draws from 0.58 to 0.70 and used
        17.7 of 18 paths on average (``bench/RESULTS.md``). Needs all the data in memory
        (k-means on every row's scores): not with a stream of batches nor
        ``distributed=True``.
    relabel : bool, default True
        The accelerated loop's relabelling of the deeper layers (``accelerate=None`` with a
        mixture start, two layers or more, ``tol > 0``): once the search has stopped, for
        every layer ``l >= 2`` and every component c of layer ``l - 1``, other labellings of
        the paths below c (layer l's labels permuted, and those above under each of them)
        are tried: c's frame of the scores is moved by the affine map that best puts its
        rows on the relabelled shared components
        (:func:`~ppl_mixtures.inference.em.dgmm_relabel.relabelled`), the two best-fitting maps and
        the identity get two SQUAREM cycles each, and the most likely is kept, greedily
        (:func:`~ppl_mixtures.inference.em.dgmm_relabel.relabel`). Where a labelling changed the
        search continues from it (appended to ``history_``), then the floor is released.
        Monotone; its E-steps are the loop's (summed over batches and ranks: a stream and
        ``distributed=True`` decide as the in-memory fit does). The mixture start decides
        which child of a component is which from score moments alone, and a wrong choice is
        a local maximum EM does not leave: on six fresh draws of the section 3.1 setting of
        Selosse et al. (2020) the move raised the log-likelihood by 0.25-1.30 nats per point
        (same or nearly the same partitions; the deeper layers' ARIs barely move, as
        labellings that differ only there differ little in likelihood; ``bench/RESULTS.md``).
        The kept labellings are listed in ``relabel_changes_``.
        False: no relabelling (the previous default). Plain EM and SVI do not use it.
    reframe : bool, default True
        The accelerated loop's last move (``accelerate=None`` with a mixture start, two
        layers or more, ``tol > 0``), after the floor's release: for every component c of
        a layer ``l - 1 < h``, c's frame of the scores ``z^(l)`` is moved by the affine map
        that best puts its rows on the shared components they belong to, two SQUAREM
        cycles follow, and the move is kept where the likelihood rises, for up to
        :data:`~ppl_mixtures.estimators._dgmm_fit.REFRAME_ROUNDS` rounds
        (:func:`~ppl_mixtures.inference.em.dgmm_moves.reframe`); where a move was kept the
        loop continues at the released floor (appended to ``history_``). With tiny
        first-layer noise EM cannot move these frames (the scores' posterior is almost a
        point, and the M-step gives the loadings back), so the layers above fit clouds read
        in frames that disagree. Monotone; its E-steps are the loop's (a stream and
        ``distributed=True`` decide as the in-memory fit does). The log-likelihood per point
        before and after it, and the moves kept, are in ``reframe_``. False: the previous
        default.
    identifiability : {None, "lower_triangular", "diagonal", "orthonormal"}, default None
        After fitting, map the parameters to this canonical form of Selosse et al. (2020), section 3.4
        (:func:`~ppl_mixtures.models.dgmm_identify.identify`: last-layer loadings rotated to the
        constraint, intermediate scores centred, scaled, ordered and signed). The likelihood,
        the predictions and the path numbering do not change; fitted loadings of different
        runs become comparable. Use :func:`~ppl_mixtures.models.dgmm_identify.match_layers`
        to align component labels across runs.
    priors : dict of str to Distribution, optional
        Replace some of :func:`~ppl_mixtures.models.dgmm.default_dgmm_priors` (SVI; EM is
        maximum likelihood).
    lr : float, optional
        SVI learning rate (Adam); None: 0.01.
    batch_size : int, optional
        SVI minibatch size.
    random_state, warm_start, verbose, verbose_interval, device, dtype, progress, \
checkpoint_path
        As for :class:`~ppl_mixtures.estimators.GaussianMixture` (a warm start continues
        from the last fit's parameters: no new layer-wise start, annealing or realignment).
    distributed : bool, default False
        EM across processes (``inference="em"`` only), as for
        :class:`~ppl_mixtures.estimators.MixtureOfFactorAnalyzers`: ``X`` in :meth:`fit`
        is this rank's shard (an array or a stream), the E-step's statistics are summed over
        the ranks, and every rank ends with the fit to all the data. The layer-wise start is
        drawn on rank 0's shard (its first batch for a stream) and broadcast; annealing then
        runs on all ranks; ``realign=True`` is refused. See ``docs/scaling.md``.

    Attributes
    ----------
    weights_ : ndarray, shape (P,)
        Path weights (eq. 4), path order.
    means_ : ndarray, shape (P, n_features)
    covariances_ : ndarray, shape (P, n_features, n_features)
        Path moments (eqs. 5-6).
    layer_weights_, eta_, loadings_, noise_variances_ : list of ndarray
        Per-layer parameters (shapes of :class:`~ppl_mixtures.models.dgmm.DGMMParams`).
    converged_, n_iter_, history_, lower_bound_, lower_bounds_, n_features_in_, fit_seconds_
        As for :class:`~ppl_mixtures.estimators.GaussianMixture`; ``history_`` holds the mean
        log-likelihood per EM iteration or the loss per sample of each SVI step.
    relabel_changes_ : list of str
        Where the relabelling ran (``relabel=True``): the labellings it kept, in order (empty
        when none beat the fit's own).
    reframe_ : dict
        Where the frames' move ran (``reframe=True``): ``before`` and ``after`` (mean
        log-likelihood per sample), ``moves`` (kept), ``continued`` (iterations of the loop
        after it) and ``seconds`` (move and continuation).
    params_ : DGMMParams
    model_ : DeepGaussianMixtureModel
    guide_ : AutoDelta or LatentScoreGuide
    """

    _parameter_constraints = {
        **COMMON_CONSTRAINTS,
        "n_components": [IntegerSequence(1), Integer(1)],
        "n_factors": [IntegerSequence(1), Integer(1)],
        "inference": [Options(INFERENCE_METHODS)],
        "form": [Options(dgmm.FORMS)],
        "init_params": [Options(INIT_METHODS)],
        "start": [Options(STARTS)],
        "accelerate": [Integer(0), NONE],
        "reg_covar": [Real(0.0)],
        "final_reg_covar": [Real(0.0), NONE],
        "anneal_start": [Real(1.0)],
        "anneal_iter": [Integer(0)],
        "realign": [BOOLEAN],
        "relabel": [BOOLEAN],
        "reframe": [BOOLEAN],
        "identifiability": [Options(CONSTRAINTS), NONE],
        "priors": [DICT, NONE],
        "max_iter": [Integer(0), NONE],
        "warm_start": [BOOLEAN],
        "verbose": [Integer(0), BOOLEAN],
        "verbose_interval": [Integer(1)],
    }
    _inference_methods = INFERENCE_METHODS
    _stream_inference_methods = ("em",)
    _distributed_inference_methods = ("em",)
    _default_max_iter = {"em": 500, "svi": 2000}
    _default_tol = {"em": 1e-5, "svi": 1e-6}
    _default_lr = {"svi": 0.01}

    def __init__(
        self,
        n_components: Sequence[int] = (3, 3, 2),
        n_factors: Sequence[int] = (11, 6, 2),
        *,
        inference: str = "em",
        form: str = "collapsed",
        n_init: int = 1,
        max_iter: int | None = None,
        tol: float | None = None,
        start: str = "auto",
        accelerate: int | None = None,
        init_params: str = "kmeans",
        reg_covar: float = 1e-6,
        final_reg_covar: float | None = 1e-8,
        anneal_start: float = 1.0,
        anneal_iter: int = 150,
        realign: bool = False,
        relabel: bool = True,
        reframe: bool = True,
        identifiability: str | None = None,
        priors: dict | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        device: str = "auto",
        dtype: Any = None,
        progress: bool = True,
        checkpoint_path: str | None = None,
        distributed: bool = False,
    ) -> None:
        self.n_components = n_components
        self.n_factors = n_factors
        self.inference = inference
        self.form = form
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.start = start
        self.accelerate = accelerate
        self.init_params = init_params
        self.reg_covar = reg_covar
        self.final_reg_covar = final_reg_covar
        self.anneal_start = anneal_start
        self.anneal_iter = anneal_iter
        self.realign = realign
        self.relabel = relabel
        self.reframe = reframe
        self.identifiability = identifiability
        self.priors = priors
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.checkpoint_path = checkpoint_path
        self.distributed = distributed

    # ----------------------------------------------------------------------------- validation

    def _n_clusters(self) -> int:
        return math.prod(_as_int_tuple(self.n_components, "n_components"))

    def _shape_key(self) -> dict[str, Any]:
        return {"n_components": self._components, "n_factors": self._factors}

    # ------------------------------------------------------------------------------- fitting

    def _build_model(self, priors: dict) -> dgmm.DeepGaussianMixtureModel:
        return dgmm.DeepGaussianMixtureModel(self._components, self._factors,
                                             self.n_features_in_, priors, form=self.form)

    def _fit(self, source: DataSource, generator: torch.Generator, resume: bool) -> None:
        x = source.sample  # a stream (EM only): its first batch
        self._check_n_features(x.shape[1])
        # weighted rows: the priors of the weighted data (the moments of the repeated rows)
        moments = source.moments()[:2] if getattr(source, "weights", None) is not None else None
        priors = dgmm.default_dgmm_priors(x, self._components, self._factors, moments=moments)
        priors.update(self.priors or {})
        self.model_ = self._build_model(priors)
        if self.inference == "em":
            self._fit_em(source, generator)
        else:
            if self.form == "latent" and (getattr(source, "weights", None) is not None or
                                          getattr(source, "weighted_stream", False)):
                raise ValueError(
                    "sample_weight with inference='svi' needs form='collapsed' (the latent "
                    "form's per-row scores are not weighted); use form='collapsed', or "
                    "inference='em'"
                )
            self._fit_svi(source, generator, resume)
        if self.identifiability is not None:
            self.params_ = identify(self.params_, self.identifiability)
            pyro.clear_param_store()  # the fit's scope only: the guide restarts at params_
            self.guide_ = dgmm.map_guide(self.model_, self.params_)
            self.guide_(x[:1])

    def _set_fitted(self) -> None:
        def to_numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
            return [t.detach().cpu().numpy() for t in tensors]

        params = self.params_
        with torch.no_grad():
            log_weights, means, covariances = dgmm.path_moments(params)
        self.weights_ = log_weights.exp().cpu().numpy()
        self.means_ = means.cpu().numpy()
        self.covariances_ = covariances.cpu().numpy()
        self.layer_weights_ = to_numpy(params.weights)
        self.eta_ = to_numpy(params.eta)
        self.loadings_ = to_numpy(params.loadings)
        self.noise_variances_ = to_numpy(params.noise_variances)

    # ---------------------------------------------------------------------------- prediction

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        return dgmm.log_joint(x, self.params_)

    def _n_parameters(self) -> int:
        return dgmm.n_parameters(self.n_features_in_, self._components, self._factors)

    def _sample_tensors(self, n_samples: int, generator: torch.Generator):
        return dgmm.sample(self.params_, n_samples, generator)

    @keeps_global_rng
    def predict_layers(self, X: Any) -> np.ndarray:
        """Per-layer labels ``(s_1, ..., s_h)`` of each sample's most probable path.

        Parameters
        ----------
        X : array-like, shape (n_samples, n_features)

        Returns
        -------
        ndarray of int, shape (n_samples, h)
        """
        paths = torch.as_tensor(self.predict(X))
        return dgmm.layer_labels(paths, self._components).numpy()

    # ------------------------------------------------------------------------------ save/load

    def _param_tensors(self) -> dict[str, torch.Tensor]:
        return self.params_.tensors()

    def _restore(self, content: dict) -> None:
        self._check_arguments()
        self.params_ = dgmm.sites_to_params(content["params"], len(self._components))
        self.model_ = self._build_model(content["priors"])
        self.guide_ = dgmm.map_guide(self.model_, self.params_)
        self.guide_(self._placeholder_row())


n_parameters = dgmm.n_parameters  # also here, beside the estimator that counts with it

__all__ = ["DeepGaussianMixture", "n_parameters"]
