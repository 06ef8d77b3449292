"""Seconds per SVI step of the Pyro GMM (and DGMM) against a hand-written torch loop.

Both optimise the marginal likelihood of a Gaussian mixture with Adam on the same data:
- Pyro, two ways: ``GaussianMixtureModel`` + MAP guide (``AutoDelta``), the assignment summed
  out by enumeration, (a) "pyro_trainer": run by :class:`~ppl_mixtures.inference.svi.SVITrainer`
  as ``GaussianMixture(inference="svi")`` runs it (its default loss, ``DenseTraceEnum_ELBO``;
  a step's cost is the trainer's own timing of its loop of ``--n-steps`` steps after a 5-step
  fit, and "trainer_setup" what a fit spends outside its steps), (b) "pyro_svi": Pyro's own
  ``SVI`` with ``TraceEnum_ELBO``, the loop measured before the dense loss; the loss also holds
  the log prior of the globals.
- torch (two loops): ``logsumexp_k [log pi_k + log N(x | mu_k, L_k L_k^T)]`` written by hand,
  parameters unconstrained (logits, means, Cholesky factors), with the component densities
  from ``torch.distributions.MultivariateNormal`` ("torch_mvn") and from the project's own
  ``component_log_prob`` ("torch_same_math": the same arithmetic as the Pyro model, so the
  ratio against it is Pyro's own overhead).

All loops are timed in interleaved rounds in one process (``--rounds``), so the ratios of a
round share the machine's load; the ranges over rounds are printed at the end.

    python bench/gmm_svi.py [--n-samples 50000] [--n-features 10] [--n-components 10]
        [--covariance-type full,diag] [--rounds 3] [--n-steps 20]
    python bench/gmm_svi.py --model dgmm [--n-samples 4000]   # the DGMM of bench/dgmm.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import time

import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em.gmm import params_from_responsibilities
from ppl_mixtures.inference.init import initial_responsibilities
from ppl_mixtures.inference.svi import SVITrainer
from ppl_mixtures.models import gmm
from ppl_mixtures.models.priors import default_gmm_priors


def time_steps(step, n_steps: int, device: str) -> float:
    for _ in range(5):  # warm-up
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n_steps


def gmm_model_guide(x, init, covariance_type):
    pyro.clear_param_store()
    k = init.n_components
    model = gmm.GaussianMixtureModel(k, x.shape[1], covariance_type,
                                     default_gmm_priors(x, k, covariance_type))
    return model, gmm.map_guide(model, init)


def pyro_step(x, init, covariance_type, lr):
    """Pyro's ``SVI`` with ``TraceEnum_ELBO`` (the loop before ``DenseTraceEnum_ELBO``)."""
    model, guide = gmm_model_guide(x, init, covariance_type)
    svi = SVI(model, guide, Adam({"lr": lr}), TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


def trainer_seconds(model, guide, x, lr, n_steps, device):
    """Seconds per step of a ``SVITrainer`` fit: a fit of ``WARM`` steps (not timed), then the
    loop of a fit of ``n_steps`` more, as the trainer times it (``SVIResult.seconds``: its
    steps, not its set-up), over ``n_steps`` — the cost of a step, as the torch loops' steps
    after their warm-up. The set-up a fit pays once is :func:`trainer_setup_seconds`."""
    _trainer_fit(model, guide, x, lr, WARM, device)
    return _trainer_fit(model, guide, x, lr, n_steps, device)[1] / n_steps


def trainer_setup_seconds(model, guide, x, lr, device):
    """Seconds a ``SVITrainer`` fit of ``WARM`` steps spends outside its loop of steps (its
    checks, the optimiser, the trainer's state), from a fresh model and guide."""
    wall, loop = _trainer_fit(model, guide, x, lr, WARM, device)
    return wall - loop


#: Steps of the fit that :func:`trainer_seconds` runs before the timed one (the torch loops'
#: warm-up).
WARM = 5


def _trainer_fit(model, guide, x, lr, n_steps, device):
    """(wall seconds, seconds of the loop of steps) of one ``SVITrainer`` fit."""
    trainer = SVITrainer(model, guide, lr=lr, max_steps=n_steps, tol=0, progress=False, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = trainer.fit(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result.seconds


def torch_step(x, init, lr, same_math=False):
    """One Adam step on the negative marginal log-likelihood, written by hand.

    Full and tied types use Cholesky factors of full matrices; the diagonal types use
    per-component log-variances, so each loop does the work its covariance type needs.
    """
    diagonal = init.covariance_type in gmm.DIAGONAL_TYPES
    logits = init.weights.log().clone().requires_grad_()
    means = init.means.clone().requires_grad_()
    if diagonal:
        spread = gmm.diagonal_variances(init).log().clone().requires_grad_()
    else:
        spread = torch.linalg.cholesky(gmm.covariance_matrices(init)).clone().requires_grad_()
    optim = torch.optim.Adam([logits, means, spread], lr=lr)

    def component_log_prob():
        if diagonal:
            if same_math:
                params = gmm.GMMParams(logits.exp(), means, spread.exp(), "diag")
                return gmm.component_log_prob(x, params)
            normal = torch.distributions.Normal(means, (0.5 * spread).exp())
            return torch.distributions.Independent(normal, 1).log_prob(x[:, None, :])
        scale_tril = spread.tril(-1) + torch.diag_embed(spread.diagonal(dim1=-2, dim2=-1).abs())
        if same_math:
            cov = scale_tril @ scale_tril.transpose(-1, -2)
            return gmm.component_log_prob(x, gmm.GMMParams(logits.exp(), means, cov, "full"))
        mvn = torch.distributions.MultivariateNormal(means, scale_tril=scale_tril)
        return mvn.log_prob(x[:, None, :])

    def step():
        optim.zero_grad()
        log_joint = component_log_prob() + torch.log_softmax(logits, 0)
        loss = -torch.logsumexp(log_joint, -1).sum()
        loss.backward()
        optim.step()
        return loss.item()

    return step


def spread(values):
    return f"{min(values):.3f}..{max(values):.3f}"


def gmm_rounds(args, devices):
    X, _ = make_gmm(args.n_samples, args.n_components, args.n_features, random_state=0)
    for device in devices:
        for covariance_type in args.covariance_type.split(","):
            for dtype in (torch.float32, torch.float64):
                x = torch.as_tensor(X, dtype=dtype, device=device)
                resp = initial_responsibilities(x, args.n_components, "k-means++",
                                                torch.Generator(device=device).manual_seed(0))
                init = params_from_responsibilities(x, resp, covariance_type, 1e-6)
                rows = []
                for round_ in range(args.rounds):
                    row = {
                        "torch_mvn": time_steps(torch_step(x, init, 0.01), args.n_steps, device),
                        "torch_same_math": time_steps(torch_step(x, init, 0.01, same_math=True),
                                                      args.n_steps, device),
                        "pyro_svi": time_steps(pyro_step(x, init, covariance_type, 0.01),
                                               args.n_steps, device),
                        "pyro_trainer": trainer_seconds(
                            *gmm_model_guide(x, init, covariance_type), x, 0.01, args.n_steps,
                            device),
                        "trainer_setup": trainer_setup_seconds(
                            *gmm_model_guide(x, init, covariance_type), x, 0.01, device),
                    }
                    rows.append(row)
                    print(json.dumps({"device": device, "dtype": str(dtype)[6:],
                                      "covariance_type": covariance_type, "round": round_,
                                      **{k: round(v, 5) for k, v in row.items()}}), flush=True)
                summarise(f"{device} {covariance_type} {str(dtype)[6:]}", rows,
                          ("torch_mvn", "torch_same_math"))


def summarise(label, rows, references):
    """Ranges over rounds of every loop's s/step and of the Pyro / torch ratios (per round)."""
    parts = [f"{k} {spread([r[k] for r in rows])} s" for k in rows[0]]
    for pyro_key in ("pyro_trainer", "pyro_svi"):
        for ref in references:
            ratios = [r[pyro_key] / r[ref] for r in rows]
            parts.append(f"{pyro_key}/{ref} {spread(ratios)}")
    print(f"# {label}: " + "; ".join(parts), flush=True)


def dgmm_rounds(args, device):
    """The DGMM of ``bench/dgmm.py`` (Selosse et al. 2020, sec. 3.1; float64)."""
    spec = importlib.util.spec_from_file_location(
        "bench_dgmm", pathlib.Path(__file__).with_name("dgmm.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from ppl_mixtures.datasets import make_dgmm
    from ppl_mixtures.inference.em import dgmm as em_dgmm
    from ppl_mixtures.models import dgmm

    X, _, _, _ = make_dgmm(args.n_samples, 17, bench.SIZES, bench.FACTORS, random_state=0,
                           standardize=True)
    x = torch.as_tensor(X, dtype=torch.float64, device=device)
    start = em_dgmm.initial_params(x, bench.SIZES, bench.FACTORS, "kmeans",
                                   torch.Generator(device="cpu").manual_seed(0))

    def model_guide():
        pyro.clear_param_store()
        priors = dgmm.default_dgmm_priors(x, bench.SIZES, bench.FACTORS)
        model = dgmm.DeepGaussianMixtureModel(bench.SIZES, bench.FACTORS, x.shape[1], priors)
        return model, dgmm.map_guide(model, start)

    rows = []
    for round_ in range(args.rounds):
        row = {
            "torch": time_steps(bench.torch_step(x, start, 0.01), args.n_steps, device),
            "pyro_svi": time_steps(bench.pyro_step(x, start, 0.01), args.n_steps, device),
            "pyro_trainer": trainer_seconds(*model_guide(), x, 0.01, args.n_steps, device),
            "trainer_setup": trainer_setup_seconds(*model_guide(), x, 0.01, device),
        }
        rows.append(row)
        print(json.dumps({"device": device, "model": "dgmm", "n_samples": args.n_samples,
                          "round": round_, **{k: round(v, 5) for k, v in row.items()}}),
              flush=True)
    summarise(f"{device} dgmm float64", rows, ("torch",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gmm", choices=("gmm", "dgmm"))
    parser.add_argument("--n-samples", type=int, default=None,
                        help="default 50000 (gmm), 4000 (dgmm)")
    parser.add_argument("--n-features", type=int, default=10)
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--covariance-type", default="full,diag",
                        help="comma-separated covariance types")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.model == "dgmm":
        args.n_samples = args.n_samples or 4000
        for device in devices:
            dgmm_rounds(args, device)
    else:
        args.n_samples = args.n_samples or 50_000
        gmm_rounds(args, devices)
    print(f"threads={torch.get_num_threads()} N={args.n_samples} D={args.n_features} "
          f"K={args.n_components}")


if __name__ == "__main__":
    main()
