"""The GMVAE fitted on a stream of batches: data read one batch at a time, never all at once.

:meth:`ppl_mixtures.GMVAE.fit` hands a stream (a ``DataLoader``, a list of batches, slices of a
memory-mapped ``.npy`` (:class:`ppl_mixtures.datasets.files.NpyBatches`), a callable that
returns a new iterator per pass) to :func:`fit_stream`, which runs the in-memory recipe pass
by pass:

1. one pass counts the rows and the batches, checks every batch, and takes the mean
   per-feature variance that sets the fixed observation variance (:func:`count_pass`);
2. the autoencoder pre-training takes one Adam step per batch, one pass per epoch
   (:func:`pretrain_autoencoder_stream`);
3. the GMM start is fitted to the latent means of the rows, collected in one pass: all of
   them up to :data:`GMM_START_MAX_ROWS` rows (``Dx`` numbers a row, e.g. 10 against 784
   pixels), otherwise a uniform sample of that many rows drawn by reservoir sampling
   (Vitter 1985, algorithm R) from the fit's seed (:func:`latent_sample`);
4. SVI takes one step per batch (:meth:`SVITrainer.fit_batches`, each batch's likelihood
   scaled by ``N / B``) for ``max_iter`` passes, checkpointed and resumable mid-pass;
5. one more pass scores the result (``lower_bound_``, the mean ELBO per row).

For the same batches in the same order each step is the in-memory step: the pre-training and
SVI losses are the same means over the same rows, and the GMM sees the same latents (in the
order of the pass that collected them). ``tests/estimators/test_gmvae_stream.py`` checks the
fit against the in-memory one fed the same batches. A fit reads the stream's
first batch ahead (its shape builds the networks), then ``pretrain_epochs + max_iter + 3``
passes (one less without the GMM start, one more to start the w head with
``init_w_encoder=True``; a resumed fit skips the pre-training and the start, which its
checkpoint holds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppl_mixtures import distributed as process_group
from ppl_mixtures._progress import progress_bar
from ppl_mixtures._rng import seeded_global_rng
from ppl_mixtures.inference import gmvae_pretrain
from ppl_mixtures.inference.svi import SVITrainer
from ppl_mixtures.models.gmvae import GMVAENetworks

#: Rows of latent means kept for the GMM start of a stream; more rows are subsampled.
GMM_START_MAX_ROWS = 100_000


@dataclass
class StreamCounts:
    """What one pass over a stream tells: its size and the moments of its features.

    Attributes
    ----------
    rows : int
    batches : int
        Batches with at least one row of positive weight (those SVI steps on).
    total_weight : float
        Sum of the weights (``rows`` when unweighted).
    variance : Tensor, shape (n_features,)
        Weighted per-feature variance (ddof 1).
    """

    rows: int
    batches: int
    total_weight: float
    variance: Tensor


def count_pass(source: Any, check: Any = None) -> StreamCounts:
    """One pass over ``source`` (a :class:`~ppl_mixtures.estimators._sources.StreamSource`).

    ``check(x)`` is called on every batch (e.g. the Bernoulli range check). Sets the
    source's row count and total weight, which the SVI trainer reads.
    """
    counts = {"rows": 0, "batches": 0, "weight": 0.0}

    def counted():
        for x, w in source.weighted_batches():
            if check is not None:
                check(x)
            counts["rows"] += x.shape[0]
            weight = float(x.shape[0]) if w is None else float(w.sum())
            counts["weight"] += weight
            counts["batches"] += weight > 0
            yield x if w is None else (x, w)

    _, variance, _ = process_group.data_moments(counted())
    source._rows, source._total_weight = counts["rows"], counts["weight"]
    return StreamCounts(counts["rows"], counts["batches"], counts["weight"], variance)


def pretrain_autoencoder_stream(networks: GMVAENetworks, batches: Any, epochs: int, lr: float,
                                n_rows: int, progress: bool = False) -> list[float]:
    """:func:`~.gmvae_pretrain.pretrain_autoencoder` over a stream: one Adam step per batch.

    Parameters
    ----------
    networks : GMVAENetworks
    batches : iterable of (Tensor, Tensor or None)
        Pairs ``(x, w)`` of every batch, ``x`` of shape (B, D), ``w`` (B,) or None; read
        once per epoch, in its own order (the in-memory function shuffles rows instead).
    epochs : int
    lr : float
    n_rows : int
        Rows in a pass (the losses are means per row).
    progress : bool
        A bar over the epochs.

    Returns
    -------
    list of float
        The mean loss per row of every epoch.
    """
    parameters = [*networks.encoder.parameters(), *networks.decoder.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    losses = []
    with progress_bar(epochs, progress, "pre-training") as bar:
        for _ in range(epochs):
            total = 0.0
            for x, weights in batches:
                optimizer.zero_grad()
                loss = gmvae_pretrain._reconstruction_loss(networks, x, weights)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * x.shape[0]
            losses.append(total / n_rows)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.5g}", refresh=False)
    return losses


def latent_sample(networks: GMVAENetworks, batches: Any, max_rows: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """Latent means ``x_loc(y)`` of the rows of one pass, at most ``max_rows`` of them.

    With ``max_rows`` or fewer rows, all of them in the order of the pass. With more, a
    uniform sample without replacement of ``max_rows`` rows (reservoir sampling, Vitter 1985,
    algorithm R; the draws from ``generator``); a row keeps its weight.

    Returns
    -------
    latents : Tensor, shape (min(N, max_rows), Dx)
    weights : Tensor, shape (min(N, max_rows),), or None for an unweighted stream
    """
    kept: list[Tensor] = []
    kept_weights: list[Tensor] = []
    reservoir: Tensor | None = None
    reservoir_weights: Tensor | None = None
    seen = 0
    weighted = False
    with torch.no_grad():
        for x, w in batches:
            weighted = w is not None
            latents = networks.encode(x)[0]
            if reservoir is None and seen + x.shape[0] <= max_rows:
                kept.append(latents)
                if weighted:
                    kept_weights.append(w)
                seen += x.shape[0]
                continue
            if reservoir is None:  # the reservoir is full from here on
                reservoir = torch.cat([*kept, latents])[:max_rows].clone()
                if weighted:
                    reservoir_weights = torch.cat([*kept_weights, w])[:max_rows].clone()
                first = max_rows - seen
                seen = max_rows
                kept, kept_weights = [], []
                latents = latents[first:]
                w = w[first:] if weighted else None
            for row in range(latents.shape[0]):  # algorithm R: row n replaces with p = M / n
                seen += 1
                slot = int(torch.randint(0, seen, (1,), generator=generator))
                if slot < max_rows:
                    reservoir[slot] = latents[row]
                    if weighted:
                        reservoir_weights[slot] = w[row]
    if reservoir is None:
        return torch.cat(kept), torch.cat(kept_weights) if weighted else None
    return reservoir, reservoir_weights


def fit_stream(est: Any, source: Any, generator: torch.Generator, resume: bool) -> None:
    """Fit the GMVAE ``est`` on the stream ``source``: see the module's docstring.

    Sets what :meth:`GMVAE._fit` sets: ``observation_scale_``, the networks,
    ``pretrain_history_``, ``init_``, ``params_``, ``history_``, ``n_iter_``, ``converged_``.
    """
    est._warn_if_far_from_unit_scale(source.sample)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    counts = count_pass(source, lambda x: est._check_unit_range(x, "fit"))
    est._set_observation_scale(counts.variance, counts.rows)
    with seeded_global_rng(seed, source.sample.device):  # the networks' initial weights
        est._build(source.sample.shape[1])
    networks = est.networks_
    restored = bool(resume and est.checkpoint_path and os.path.exists(est.checkpoint_path))
    init = est._resolve_init(source.sample.shape[1])
    pairs = _Pairs(source)
    if not restored and init == "gmm":
        if est.pretrain_epochs > 0:
            est.pretrain_history_ = pretrain_autoencoder_stream(
                networks, pairs, est.pretrain_epochs, gmvae_pretrain.PRETRAIN_LR, counts.rows,
                progress=est.progress)
        if counts.rows >= est.n_components:
            latents, weights = latent_sample(networks, pairs, GMM_START_MAX_ROWS,
                                             torch.Generator().manual_seed(seed))
            est._gmm_start(None, seed, weights, latents=latents,
                           batches=(x for x, _ in pairs) if est.init_w_encoder else None)
    trainer = SVITrainer(
        est.model_, est.guide_, lr=est.lr, num_particles=est.num_particles,
        batch_size=est.batch_size, max_steps=est._max_iter * max(counts.batches, 1),
        tol=est.tol, progress=est.progress, checkpoint_path=est.checkpoint_path, seed=seed,
    )
    est._set_result(trainer.fit_batches(
        source.svi_batches(), counts.rows, resume=resume,
        total_weight=counts.total_weight if source.weighted_stream else None))


def lower_bound(est: Any, source: Any) -> float:
    """Mean ELBO per row over one pass (weighted: ``sum_n w_n ELBO_n / sum_n w_n``)."""
    total, weight = 0.0, 0.0
    for x, w in source.weighted_batches():
        elbo = est.score_samples(x).astype(np.float64)
        weights = np.ones_like(elbo) if w is None else w.detach().cpu().numpy()
        total += float(weights @ elbo)
        weight += float(weights.sum())
    return total / weight


class _Pairs:
    """A re-iterable view of a stream as ``(x, w)`` pairs (``w`` None when unweighted)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __iter__(self):
        return iter(self.source.weighted_batches())
