"""NUTS (Hoffman & Gelman 2014) over the globals of a model whose discrete sites are enumerated.

Pyro's ``NUTS`` sums out every site marked ``infer={"enumerate": "parallel"}`` (the mixtures'
assignments), so the chain moves over the continuous globals only. Mixture posteriors are
symmetric under relabelling of components; :func:`align_components` permutes each draw's
components to match a reference (Hungarian matching of the means), so that summaries and
``r_hat`` compare like with like.

Several chains run in spawned processes or one after the other (:func:`parallel_chains`).
Pyro decides that from the core count alone; :func:`run_nuts` swaps in the sampler that
``chain_method`` asks for (Pyro's ``_MultiSampler`` or ``_UnarySampler``, private classes of
``pyro.infer.mcmc.api``, checked against Pyro 1.9).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc.api import _MultiSampler, _UnarySampler
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ppl_mixtures._progress import progress_enabled
from ppl_mixtures._rng import seeded_global_rng


def run_nuts(
    model: Callable,
    x: Tensor,
    init_sites: dict[str, Tensor],
    *,
    num_samples: int = 200,
    num_warmup: int = 200,
    num_chains: int = 1,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    seed: int | None = None,
    progress: bool = True,
    sample_weight: Tensor | None = None,
    chain_method: str = "auto",
) -> MCMC:
    """Run NUTS on ``model(x)`` from ``init_sites``; enumerated sites are summed out.

    Parameters
    ----------
    model : callable
        A zoo model with attribute ``max_plate_nesting``.
    x : Tensor, shape (n_samples, n_features)
    init_sites : dict of str to Tensor
        Starting values of the global sites (e.g. an EM or k-means estimate), which keeps
        every chain near one labelling of the components.
    num_samples, num_warmup, num_chains : int
        Draws kept per chain, warm-up (adaptation) steps per chain, and chains (run as
        ``chain_method`` says).
    target_accept_prob, max_tree_depth
        NUTS settings.
    seed : int, optional
        Seeds Pyro's RNGs for the run, on forked global generators
        (:func:`ppl_mixtures._rng.fork_rng`): the caller's random streams are restored
        afterwards. None draws from (and advances) the caller's.
    progress : bool
        Show Pyro's progress bar (only on a terminal).
    sample_weight : Tensor, shape (n_samples,), optional
        Row weights, passed to the model (``model(x, sample_weight=w)``): the potential's
        log-likelihood is ``sum_n w_n log p(x_n | theta)``.
    chain_method : {"auto", "parallel", "sequential"}, default "auto"
        How ``num_chains > 1`` chains run (see :func:`parallel_chains`): ``"parallel"``, one
        process per chain (started with ``"spawn"``, so a script that fits must guard its
        entry point with ``if __name__ == "__main__":``); ``"sequential"``, one after the
        other in this process; ``"auto"``, parallel when at least ``num_chains`` cores are
        free besides this process's, sequential otherwise. In parallel, chain ``c`` is
        seeded with ``seed + c`` in its own process; in sequence the chains continue one
        stream, so the two methods give different (equally valid) draws.

    Returns
    -------
    pyro.infer.MCMC
        Call ``get_samples(group_by_chain=...)`` and ``diagnostics()`` on it.

    Raises
    ------
    ValueError
        If ``chain_method`` is not one of the three.
    """
    parallel = parallel_chains(num_chains, chain_method)
    kernel = NUTS(
        model,
        max_plate_nesting=model.max_plate_nesting,
        init_strategy=init_to_value(values={k: v.detach() for k, v in init_sites.items()}),
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
        jit_compile=False,
    )
    disable_progbar = not progress_enabled(progress)
    with warnings.catch_warnings():  # Pyro's "drawn sequentially" notice: decided below
        warnings.filterwarnings("ignore", message="num_chains=.*Chains will be drawn")
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup,
                    num_chains=num_chains, mp_context="spawn", disable_progbar=disable_progbar)
    # Pyro picks processes iff num_chains <= cpu_count - 1; follow chain_method instead.
    if parallel and not isinstance(mcmc.sampler, _MultiSampler):
        mcmc.sampler = _MultiSampler(kernel, num_samples, num_warmup, num_chains, "spawn",
                                     disable_progbar)
    elif not parallel and isinstance(mcmc.sampler, _MultiSampler):
        mcmc.sampler.terminate()  # stops its logging thread; no worker was started
        mcmc.sampler = _UnarySampler(kernel, num_samples, num_warmup, num_chains,
                                     disable_progbar)
    kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
    if seed is None:
        mcmc.run(x, **kwargs)
        return mcmc
    with seeded_global_rng(seed, x.device):  # the caller's random streams stay as they were
        mcmc.run(x, **kwargs)
    return mcmc


CHAIN_METHODS: tuple[str, ...] = ("auto", "parallel", "sequential")


def free_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def parallel_chains(num_chains: int, chain_method: str = "auto") -> bool:
    """Whether ``num_chains`` NUTS chains run in processes of their own.

    Parameters
    ----------
    num_chains : int
    chain_method : {"auto", "parallel", "sequential"}
        ``"auto"``: in parallel when ``num_chains > 1`` and at least ``num_chains`` cores are
        free besides the one of this process (:func:`free_cores`), as Pyro's own rule.

    Returns
    -------
    bool
        False whenever ``num_chains == 1``.
    """
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method={chain_method!r} is not one of {CHAIN_METHODS}")
    if num_chains <= 1 or chain_method == "sequential":
        return False
    return chain_method == "parallel" or free_cores() - 1 >= num_chains


def align_components(
    samples: dict[str, Tensor],
    reference_means: Tensor,
    component_sites: Sequence[str],
) -> tuple[dict[str, Tensor], Tensor]:
    """Relabel every draw so that its components match ``reference_means``.

    For each draw, the permutation minimising the summed squared distance between its means
    and the reference means (Hungarian algorithm) is applied to every per-component site.

    Parameters
    ----------
    samples : dict of str to Tensor
        Draws with a leading draw dim, e.g. ``means`` of shape (S, K, D).
    reference_means : Tensor, shape (K, D)
    component_sites : sequence of str
        Sites whose dim after the draw dim indexes components (``weights``, ``means``,
        per-component ``variances`` ...).

    Returns
    -------
    aligned : dict of str to Tensor
    permutations : Tensor of long, shape (S, K)
        ``aligned[site][s] = samples[site][s][permutations[s]]``.
    """
    means = samples["means"]
    cost = torch.cdist(reference_means.expand(means.shape[0], -1, -1), means).square()
    permutations = torch.stack([
        torch.as_tensor(linear_sum_assignment(c.detach().cpu().numpy())[1]) for c in cost
    ]).to(means.device)
    draws = torch.arange(means.shape[0], device=means.device)[:, None]
    aligned = dict(samples)
    for name in component_sites:
        aligned[name] = samples[name][draws, permutations]
    return aligned, permutations


def sampler_statistics(mcmc: MCMC) -> dict[str, np.ndarray]:
    """What NUTS reports about its own run, per chain, after warm-up.

    Parameters
    ----------
    mcmc : pyro.infer.MCMC
        A finished run (``run_nuts``).

    Returns
    -------
    dict with
        ``"diverging"``: bool ndarray, shape (num_chains, num_samples), True at the draws whose
        trajectory diverged (energy error above NUTS's threshold);
        ``"acceptance_rate"``: ndarray, shape (num_chains,), Pyro's "acceptance rate": the
        fraction of kept iterations where the sampler moved to a new state (not the mean
        Metropolis acceptance probability, which Pyro does not report per chain).
    """
    per_chain = mcmc.diagnostics()
    n_chains, n_draws = mcmc.num_chains, mcmc.num_samples
    diverging = np.zeros((n_chains, n_draws), dtype=bool)
    acceptance = np.full(n_chains, np.nan)
    for chain in range(n_chains):
        key = f"chain {chain}"
        diverging[chain, per_chain["divergences"][key]] = True
        acceptance[chain] = float(per_chain["acceptance rate"][key])
    return {"diverging": diverging, "acceptance_rate": acceptance}


@dataclass
class NUTSPosterior:
    """Relabelled draws of a NUTS run and what the sampler reported.

    Attributes
    ----------
    samples : dict of str to Tensor
        Every global site, chains concatenated (num_chains * num_samples, ...), each draw's
        components permuted onto the reference (:func:`align_components`).
    sampler_stats : dict of str to ndarray
        :func:`sampler_statistics` of the run.
    """

    samples: dict[str, Tensor]
    sampler_stats: dict[str, np.ndarray]

    def numpy(self) -> dict[str, np.ndarray]:
        """``samples`` as NumPy arrays on the CPU."""
        return {k: v.detach().cpu().numpy() for k, v in self.samples.items()}


def sample_posterior(
    model: Callable,
    x: Tensor,
    init_sites: dict[str, Tensor],
    component_sites: Sequence[str],
    **nuts_options,
) -> NUTSPosterior:
    """:func:`run_nuts` from ``init_sites``, then relabel the draws onto ``init_sites["means"]``.

    Parameters
    ----------
    model : callable
        A zoo model (``max_plate_nesting`` attribute) with a ``"means"`` site of shape (K, D).
    x : Tensor, shape (n_samples, n_features)
    init_sites : dict of str to Tensor
        Starting values of the global sites; its means are the relabelling reference.
    component_sites : sequence of str
        Sites whose first dim indexes components (see :func:`align_components`).
    **nuts_options
        ``num_samples``, ``num_warmup``, ``num_chains``, ``seed``, ``progress`` ... of
        :func:`run_nuts`.

    Returns
    -------
    NUTSPosterior
    """
    mcmc = run_nuts(model, x, init_sites, **nuts_options)
    samples, _ = align_components(mcmc.get_samples(), init_sites["means"], component_sites)
    return NUTSPosterior(samples, sampler_statistics(mcmc))


def split_r_hat(draws: np.ndarray) -> np.ndarray:
    """Split-R-hat over the first axis (draws of one chain, or chains concatenated).

    Parameters
    ----------
    draws : ndarray, shape (S, ...)

    Returns
    -------
    ndarray, shape (...)
    """
    half = draws.shape[0] // 2
    chains = np.stack([draws[:half], draws[half: 2 * half]])  # (2, half, ...)
    within = chains.var(axis=1, ddof=1).mean(0)
    between = half * chains.mean(axis=1).var(axis=0, ddof=1)
    pooled = (half - 1) / half * within + between / half
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.where(within > 0, pooled / within, 1.0))
