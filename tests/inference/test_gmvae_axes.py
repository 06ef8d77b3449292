"""The GMVAE start in the common principal axes of its latent mixture (gmvae_axes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures.estimators.gaussian import GaussianMixture
from ppl_mixtures.estimators.gmvae import GMVAE
from ppl_mixtures.inference import gmvae_axes, gmvae_pretrain
from ppl_mixtures.models import gmvae


def _orthogonal(dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q


def test_common_axes_recover_shared_eigenvectors():
    """Covariances Q diag(l_k) Q^T: the axes found make every one of them diagonal."""
    q = _orthogonal(5, 0)
    generator = torch.Generator().manual_seed(1)
    spectra = torch.rand(4, 5, generator=generator, dtype=torch.float64) * 3 + 0.1
    covariances = q @ torch.diag_embed(spectra) @ q.T
    axes = gmvae_axes.common_axes(covariances, sizes=np.array([10.0, 20.0, 5.0, 7.0]))
    torch.testing.assert_close(axes.T @ axes, torch.eye(5, dtype=torch.float64))
    turned = axes.T @ covariances @ axes
    off = turned - torch.diag_embed(torch.diagonal(turned, dim1=-2, dim2=-1))
    assert float(off.abs().max()) < 1e-6 * float(turned.abs().max())


def test_common_axes_are_canonical_under_rounding():
    """Order by weighted variance, largest entry of each axis positive: covariances that
    differ by rounding give the same axes (eigenvectors' signs would otherwise be free)."""
    generator = torch.Generator().manual_seed(4)
    factors = torch.randn(3, 4, 4, generator=generator, dtype=torch.float64)
    covariances = factors @ factors.transpose(1, 2) + torch.eye(4, dtype=torch.float64)
    axes = gmvae_axes.common_axes(covariances).numpy()
    nudged = gmvae_axes.common_axes(covariances * (1 + 1e-13)).numpy()
    np.testing.assert_allclose(nudged, axes, atol=1e-8)
    largest = axes[np.abs(axes).argmax(0), np.arange(4)]
    assert (largest > 0).all()
    variances = np.einsum("dk,nde,ek->k", axes, covariances.numpy(), axes)
    assert (np.diff(variances) <= 0).all()


def test_unit_weights_start_as_no_weights():
    """The turned start (Dw < Dx) of unit weights is the unweighted one: same history."""
    X, _ = _correlated_clusters()
    fits = [GMVAE(3, likelihood="gaussian", max_iter=1, batch_size=64, latent_dim=3, w_dim=1,
                  hidden_dims=(8,), prior_hidden_dims=(8,), pretrain_epochs=2,
                  init_restarts=3, progress=False, device="cpu", dtype="float64",
                  random_state=0).fit(X, sample_weight=weights)
            for weights in (None, np.ones(len(X)))]
    np.testing.assert_allclose(fits[1].history_, fits[0].history_, rtol=1e-8)


def test_common_axes_lower_the_criterion_from_the_pooled_axes():
    """On covariances without common axes the FG sweeps only lower sum_k n_k log det diag,
    starting from the pooled covariance's eigenvectors."""
    generator = torch.Generator().manual_seed(2)
    factors = torch.randn(6, 7, 7, generator=generator, dtype=torch.float64)
    covariances = factors @ factors.transpose(1, 2) + 0.1 * torch.eye(7, dtype=torch.float64)
    sizes = np.arange(1.0, 7.0)
    covariances_np = covariances.numpy()
    _, pooled = np.linalg.eigh(np.einsum("n,nij->ij", sizes, covariances_np))
    start = gmvae_axes._criterion(pooled, covariances_np, sizes)
    axes = gmvae_axes.common_axes(covariances, sizes).numpy()
    one_sweep = gmvae_axes.common_axes(covariances, sizes, max_sweeps=1).numpy()
    found = gmvae_axes._criterion(axes, covariances_np, sizes)
    assert found <= gmvae_axes._criterion(one_sweep, covariances_np, sizes) <= start
    assert found < start - 1.0
    np.testing.assert_allclose(axes.T @ axes, np.eye(7), atol=1e-12)
    # a budget of pair rotations cuts the sweeps (never below one)
    cut = gmvae_axes.common_axes(covariances, sizes, max_rotations=1).numpy()
    np.testing.assert_allclose(cut, gmvae_axes._canonical(one_sweep, covariances_np, sizes),
                               atol=1e-12)
    # Hadamard: log det diag >= log det, so the criterion is bounded below there
    assert found >= float((torch.as_tensor(sizes) * torch.logdet(covariances)).sum()) - 1e-9


@pytest.mark.parametrize("preset", ["mlp", "conv"])
def test_rotate_latent_space_keeps_the_autoencoder(preset):
    """x_loc becomes R^T x_loc (rows: x_loc @ R) and the decoder of the turned latents
    gives the same outputs: the reconstructions are unchanged."""
    torch.manual_seed(0)
    if preset == "mlp":
        networks = gmvae.GMVAENetworks(6, 3, gmvae.Architecture(3, 2, (8,), (8,), (8,)))
        y = torch.rand(20, 6)
    else:
        arch = gmvae.Architecture(3, 2, (16,), (8,), (16,), conv=((4, 3, 1, 1),))
        networks = gmvae.GMVAENetworks(16, 3, arch)
        y = torch.rand(20, 16)
    turn = _orthogonal(3, 3).to(next(networks.parameters()))
    with torch.no_grad():
        x_before = networks.encode(y)[0]
        out_before = networks.decoder(x_before)
    output = gmvae_pretrain.last_linear(networks.encoder)
    assert gmvae_axes.rotate_latent_space(networks, turn, x_before, output)
    with torch.no_grad():
        x_after = networks.encode(y)[0]
        torch.testing.assert_close(x_after, x_before @ turn, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(networks.decoder(x_after), out_before, rtol=1e-4,
                                   atol=1e-5)


class _SquashThenLinear(torch.nn.Module):
    """A user decoder that transforms x before its first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.sin(3 * x))


def test_rotate_latent_space_refuses_a_decoder_it_would_change():
    torch.manual_seed(0)
    networks = gmvae.GMVAENetworks(6, 3, gmvae.Architecture(3, 2, (8,), (8,), (8,)),
                                   decoder=_SquashThenLinear())
    saved = {k: v.clone() for k, v in networks.state_dict().items()}
    probe = torch.randn(30, 3)
    output = gmvae_pretrain.last_linear(networks.encoder)
    assert not gmvae_axes.rotate_latent_space(networks, _orthogonal(3, 1).float(), probe,
                                              output)
    for name, value in networks.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)
    # a decoder without a first linear layer is not turned either
    networks.decoder = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(3, 6))
    assert not gmvae_axes.rotate_latent_space(networks, _orthogonal(3, 1).float(), probe,
                                              output)


def _correlated_clusters():
    """Three clusters in 4-D whose covariances share tilted axes."""
    rng = np.random.default_rng(0)
    q = _orthogonal(4, 5).numpy()
    scales = np.array([[3.0, 1.0, 0.3, 0.1], [0.2, 2.5, 1.0, 0.1], [1.0, 0.1, 2.0, 0.4]])
    centres = np.array([[8.0, 0, 0, 0], [0, 8.0, 0, 0], [0, 0, 8.0, 0]])
    rows = [centres[k] + (rng.standard_normal((150, 4)) * scales[k]) @ q.T for k in range(3)]
    return np.concatenate(rows), np.repeat(np.arange(3), 150)


def test_gmm_start_rotated_is_the_same_mixture_in_turned_axes():
    """rotate=True: the same clusters; the encoder's latents are the unturned ones times R;
    the decoder's reconstructions are unchanged; and the factor analysers fitted in the
    turned axes are closer (Gaussian likelihood of the latents) than in the pre-trained ones.
    """
    x, labels = _correlated_clusters()
    y = torch.as_tensor(x)
    results = {}
    for rotate in (False, True):
        torch.manual_seed(0)
        arch = gmvae.Architecture(4, 1, (8,), (8,), (8,))
        networks = gmvae.GMVAENetworks(4, 3, arch).double()
        with torch.no_grad():  # an identity encoder mean and a fixed decoder
            output = gmvae_pretrain.last_linear(networks.encoder)
            output.weight.zero_()
            output.bias.zero_()
            networks.encoder[0].weight.zero_()
            networks.encoder[0].weight[:4, :4] = torch.eye(4)
            networks.encoder[0].bias.fill_(100.0)
            output.weight[:4, :4] = torch.eye(4)
            output.bias[:4] = -100.0
        start = gmvae_pretrain.gmm_start(networks, y, seed=0, mixture=GaussianMixture,
                                         n_init=2, rotate=rotate)
        with torch.no_grad():
            latents = gmvae_pretrain.latent_means(networks, y)
            means, scales = networks.conditional_prior(torch.zeros(1, 1, dtype=torch.float64))
            step = 1e-3
            slopes = (networks.conditional_prior(torch.full((1, 1), step,
                                                            dtype=torch.float64))[0]
                      - means)[0] / step  # (K, Dx)
            covariances = (slopes[:, :, None] * slopes[:, None, :]
                           + torch.diag_embed(scales[0] ** 2))
            log_density = gmvae_pretrain._gaussian_log_densities(latents, means[0], covariances)
            results[rotate] = dict(start=start, latents=latents,
                                   recon=networks.decoder(latents),
                                   fit=float(torch.logsumexp(log_density, 1).mean()))
    assert adjusted_rand_score(labels, results[True]["start"]) == 1.0
    assert adjusted_rand_score(results[False]["start"], results[True]["start"]) == 1.0
    unturned, turned = results[False]["latents"], results[True]["latents"]
    turn = torch.linalg.lstsq(unturned, turned).solution
    torch.testing.assert_close(turn.T @ turn, torch.eye(4, dtype=torch.float64), atol=1e-8,
                               rtol=0)
    torch.testing.assert_close(results[True]["recon"], results[False]["recon"], atol=1e-8,
                               rtol=1e-8)
    assert results[True]["fit"] > results[False]["fit"] + 0.1


def test_init_rotate_is_validated_and_reaches_the_start(monkeypatch):
    X = np.random.default_rng(0).random((30, 6))
    with pytest.raises(ValueError, match="init_rotate"):
        GMVAE(3, init_rotate="yes").fit(X)
    seen = []
    start = gmvae_pretrain.gmm_start
    monkeypatch.setattr(gmvae_pretrain, "gmm_start",
                        lambda *args, **options: seen.append(options["rotate"])
                        or start(*args, **options))
    for rotate in (False, True):
        GMVAE(3, latent_dim=2, w_dim=1, hidden_dims=(8,), prior_hidden_dims=(8,),
              init_restarts=2, pretrain_epochs=1, init="gmm", max_iter=1, progress=False,
              random_state=0, device="cpu", init_rotate=rotate).fit(X)
    assert seen == [False, True]
