"""Seconds per SVI step of the Pyro GMM against a hand-written torch loop.

Both optimise the marginal likelihood of a Gaussian mixture with Adam on the same data:
- Pyro: ``GaussianMixtureModel`` + MAP guide (``AutoDelta``) under ``TraceEnum_ELBO`` (the
  assignment summed out by enumeration), as ``GaussianMixture(inference="svi")`` runs it;
  its loss also holds the log prior of the globals.
- torch (two loops): ``logsumexp_k [log pi_k + log N(x | mu_k, L_k L_k^T)]`` written by hand,
  parameters unconstrained (logits, means, Cholesky factors), with the component densities
  from ``torch.distributions.MultivariateNormal`` ("torch_mvn") and from the project's own
  ``component_log_prob`` ("torch_same_math": the same arithmetic as the Pyro model, so the
  ratio against it is Pyro's own overhead).

    python bench/gmm_svi.py [--n-samples 50000] [--n-features 10] [--n-components 10]
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

from ppl_mixtures.datasets import make_gmm
from ppl_mixtures.inference.em.gmm import params_from_responsibilities
from ppl_mixtures.inference.init import initial_responsibilities
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


def pyro_step(x, init, covariance_type, lr):
    pyro.clear_param_store()
    k = init.n_components
    model = gmm.GaussianMixtureModel(k, x.shape[1], covariance_type,
                                     default_gmm_priors(x, k, covariance_type))
    guide = gmm.map_guide(model, init)
    svi = SVI(model, guide, Adam({"lr": lr}), TraceEnum_ELBO(max_plate_nesting=1))
    return lambda: svi.step(x)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=50_000)
    parser.add_argument("--n-features", type=int, default=10)
    parser.add_argument("--n-components", type=int, default=10)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--covariance-type", default="full")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    X, _ = make_gmm(args.n_samples, args.n_components, args.n_features, random_state=0)
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            x = torch.as_tensor(X, dtype=dtype, device=device)
            resp = initial_responsibilities(x, args.n_components, "k-means++",
                                            torch.Generator(device=device).manual_seed(0))
            init = params_from_responsibilities(x, resp, args.covariance_type, 1e-6)
            pyro_s = time_steps(pyro_step(x, init, args.covariance_type, 0.01), args.n_steps,
                                device)
            mvn_s = time_steps(torch_step(x, init, 0.01), args.n_steps, device)
            same_s = time_steps(torch_step(x, init, 0.01, same_math=True), args.n_steps, device)
            print(json.dumps({
                "device": device, "dtype": str(dtype).replace("torch.", ""),
                "covariance_type": args.covariance_type, "pyro_s_per_step": pyro_s,
                "torch_mvn_s_per_step": mvn_s, "torch_same_math_s_per_step": same_s,
                "ratio_pyro_over_torch_mvn": pyro_s / mvn_s,
                "ratio_pyro_over_torch_same_math": pyro_s / same_s,
            }))
    print(f"threads={torch.get_num_threads()} N={args.n_samples} D={args.n_features} "
          f"K={args.n_components}")


if __name__ == "__main__":
    main()
