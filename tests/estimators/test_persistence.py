"""The safe file format: nothing a user loads runs code; round trips give the same estimator.

A crafted pickle whose unpickling would create a marker file is handed to every entry point
that reads a file (the four ``load`` methods, ``load_estimator``, SVI resumption through the
estimators and the trainer, the command line's ``diagnose`` and ``fit --resume``): each must
refuse it with a clear error, and the marker must never appear.
"""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from ppl_mixtures import (
    GMVAE,
    BayesianGaussianMixture,
    DeepGaussianMixture,
    GaussianMixture,
    MixtureOfFactorAnalyzers,
    load_estimator,
)
from ppl_mixtures import io as file_format
from ppl_mixtures.cli import main
from ppl_mixtures.datasets import make_gmm

QUIET = dict(progress=False, device="cpu", random_state=0)


class _Exploit:
    """Unpickling this object opens (creates) ``marker``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(tmp_path, name="evil.pt", legacy=False):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    payload = {"class": "GaussianMixture", "exploit": _Exploit(str(marker))}
    if legacy:
        with open(path, "wb") as file:
            pickle.dump(payload, file, protocol=2)
    else:
        torch.save(payload, path)
    return path, marker


@pytest.fixture(scope="module")
def data():
    X, y = make_gmm(n_samples=240, n_components=3, n_features=4, separation=4.0, random_state=1)
    return X, y


LOADERS = [
    ("GaussianMixture.load", GaussianMixture.load),
    ("MixtureOfFactorAnalyzers.load", MixtureOfFactorAnalyzers.load),
    ("DeepGaussianMixture.load", DeepGaussianMixture.load),
    ("GMVAE.load", GMVAE.load),
    ("BayesianGaussianMixture.load", BayesianGaussianMixture.load),
    ("load_estimator", load_estimator),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["torch.save", "legacy pickle"])
@pytest.mark.parametrize("name,loader", LOADERS, ids=[n for n, _ in LOADERS])
def test_loading_a_pickle_runs_nothing(tmp_path, name, loader, legacy):
    path, marker = _crafted(tmp_path, legacy=legacy)
    with pytest.raises(file_format.FileFormatError, match="pickle.*never read"):
        loader(path)
    assert not marker.exists()


@pytest.mark.parametrize("make", [
    lambda path: GaussianMixture(3, inference="svi", max_iter=5, checkpoint_path=path, **QUIET),
    lambda path: GMVAE(3, max_iter=1, batch_size=60, checkpoint_path=path, init_restarts=3,
                       **QUIET),
], ids=["GaussianMixture svi", "GMVAE"])
def test_resuming_from_a_crafted_checkpoint_runs_nothing(tmp_path, data, make):
    path, marker = _crafted(tmp_path, "checkpoint.pt")
    with pytest.raises(file_format.FileFormatError, match="pickle"):
        make(path).fit(data[0], resume=True)
    assert not marker.exists()


def test_cli_diagnose_refuses_a_pickle(tmp_path, capsys):
    path, marker = _crafted(tmp_path, "model.safetensors")
    code = main(["diagnose", str(path), "--data", "gmm", "--out", str(tmp_path / "diag")])
    assert code == 2 and not marker.exists()
    assert "pickle" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["gmm", "gmvae"])
def test_cli_resume_refuses_a_crafted_checkpoint(tmp_path, capsys, model):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"exploit": _Exploit(str(marker))}, out / "checkpoint.safetensors")
    options = ["--inference", "svi"] if model == "gmm" else []
    code = main(["fit", model, "--out", str(out), "--no-progress", "--device", "cpu",
                 "--max-iter", "2", "--resume", *options])
    assert code == 2 and not marker.exists()
    assert "pickle" in capsys.readouterr().err


# ----------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def saved(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("saved") / "gmm.safetensors"
    GaussianMixture(3, **QUIET).fit(data[0]).save(path)
    return path


def _rewrite_metadata(source, target, **changes):
    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])


def test_truncated_file_names_the_file(tmp_path, saved):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(saved.read_bytes()[:-40])
    with pytest.raises(file_format.FileFormatError, match=f"{path}.*(damaged|truncated)"):
        load_estimator(path)
    path.write_bytes(b"")
    with pytest.raises(file_format.FileFormatError, match="empty, truncated"):
        load_estimator(path)


def test_damaged_data_fails_the_checksum(tmp_path, saved):
    raw = bytearray(saved.read_bytes())
    raw[-3] ^= 0xFF
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(raw))
    with pytest.raises(file_format.FileFormatError, match="checksum"):
        load_estimator(path)


def test_other_format_version_and_other_class(tmp_path, saved):
    path = tmp_path / "v99.safetensors"
    _rewrite_metadata(saved, path, format_version="99")
    with pytest.raises(file_format.FileFormatError, match="format version '99'"):
        load_estimator(path)
    with pytest.raises(file_format.FileFormatError, match="holds a 'GaussianMixture', not a "
                                                          "MixtureOfFactorAnalyzers"):
        MixtureOfFactorAnalyzers.load(saved)
    path = tmp_path / "checkpoint-kind.safetensors"
    _rewrite_metadata(saved, path, kind="svi-checkpoint")
    with pytest.raises(file_format.FileFormatError, match="not a 'estimator'"):
        GaussianMixture.load(path)


def test_unknown_entries_and_foreign_distributions_are_refused(tmp_path):
    path = tmp_path / "odd.safetensors"
    file_format.write(path, "estimator", {"class": "GaussianMixture"})
    _rewrite_metadata(path, path, content=json.dumps({"x": {"__import__": "os"}}))
    with pytest.raises(file_format.FileFormatError, match="unknown entry"):
        load_estimator(path)
    _rewrite_metadata(path, path, content=json.dumps(
        {"x": {"__distribution__": "__class__", "args": {}}}))
    with pytest.raises(file_format.FileFormatError, match="not a distribution"):
        load_estimator(path)


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, data, monkeypatch):
    path = tmp_path / "gmm.safetensors"
    est = GaussianMixture(3, **QUIET).fit(data[0])
    est.save(path)
    before = path.read_bytes()

    def full_disk(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(file_format.os, "fsync", full_disk)
    with pytest.raises(OSError, match="disk full"):
        GaussianMixture(2, **QUIET).fit(data[0]).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_unsavable_arguments_give_a_clear_error(tmp_path, data):
    X = data[0][:60, :2]
    encoder = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(),
                                  torch.nn.Linear(8, 2 * (2 + 2)))
    est = GMVAE(2, networks={"encoder": encoder}, latent_dim=2, w_dim=2, max_iter=1,
                batch_size=30, **QUIET).fit(X)
    with pytest.raises(TypeError, match="cannot save this GMVAE: .*networks.*cannot be saved"):
        est.save(tmp_path / "net.safetensors")
    assert not (tmp_path / "net.safetensors").exists()


# -------------------------------------------------------------------------------- round trips

ROUND_TRIPS = {
    "gmm-em-full": lambda: GaussianMixture(3, **QUIET),
    "gmm-em-spherical-float32": lambda: GaussianMixture(3, covariance_type="spherical",
                                                        dtype="float32", **QUIET),
    "gmm-svi-map": lambda: GaussianMixture(3, inference="svi", max_iter=60, **QUIET),
    "gmm-svi-mean-field": lambda: GaussianMixture(3, inference="svi", guide="mean_field",
                                                  max_iter=60, **QUIET),
    "gmm-nuts": lambda: GaussianMixture(3, covariance_type="diag", inference="nuts",
                                        max_iter=8, num_warmup=8, **QUIET),
    "gmm-sgd": lambda: GaussianMixture(3, covariance_type="diag", inference="sgd", max_iter=2,
                                       batch_size=16, **QUIET),
    "mfa-em": lambda: MixtureOfFactorAnalyzers(3, 1, **QUIET),
    "mfa-svi": lambda: MixtureOfFactorAnalyzers(3, 1, inference="svi", max_iter=40, **QUIET),
    "mfa-nuts": lambda: MixtureOfFactorAnalyzers(2, 1, inference="nuts", max_iter=6,
                                                 num_warmup=6, **QUIET),
    "dgmm-em": lambda: DeepGaussianMixture((2, 2), (2, 1), max_iter=15, **QUIET),
    "dgmm-svi": lambda: DeepGaussianMixture((2, 2), (2, 1), inference="svi", max_iter=30,
                                            **QUIET),
    "dgmm-em-identified": lambda: DeepGaussianMixture((2, 1), (2, 1), max_iter=15,
                                                      identifiability="diagonal", **QUIET),
    "gmvae": lambda: GMVAE(3, max_iter=2, batch_size=60, init_restarts=3, **QUIET),
    "bgmm-cavi-dp": lambda: BayesianGaussianMixture(3, **QUIET),
    "bgmm-cavi-dirichlet-diag": lambda: BayesianGaussianMixture(
        3, covariance_type="diag", weight_concentration_prior_type="dirichlet_distribution",
        **QUIET),
    "bgmm-svi": lambda: BayesianGaussianMixture(3, inference="svi", max_iter=30, **QUIET),
}


def _same_fitted(a, b):
    for name, value in vars(a).items():
        if not name.endswith("_") or name.startswith("_") or name in (
                "model_", "guide_", "params_", "param_store_state_", "networks_"):
            continue
        _assert_same(getattr(b, name), value, name)


def _assert_same(other, value, name):
    if isinstance(value, dict):
        assert value.keys() == other.keys(), name
        for key in value:
            _assert_same(other[key], value[key], f"{name}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        assert len(other) == len(value), name
        for index, (got, expected) in enumerate(zip(other, value, strict=True)):
            _assert_same(got, expected, f"{name}[{index}]")
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(other, value, err_msg=name)
    else:
        assert other == value or (value != value and other != other), name


@pytest.mark.parametrize("key", list(ROUND_TRIPS))
def test_round_trip_equals_the_unsaved_estimator(tmp_path, data, key):
    X, _ = data
    est = ROUND_TRIPS[key]().fit(X)
    path = tmp_path / f"{key}.safetensors"
    est.save(path)
    back = load_estimator(path, device="cpu")
    assert type(back) is type(est) and back.get_params() == est.get_params()
    _same_fitted(est, back)
    np.testing.assert_array_equal(back.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(back.score_samples(X), est.score_samples(X))
    np.testing.assert_array_equal(back.sample(7)[0], est.sample(7)[0])
    if hasattr(est, "bic"):
        assert back.bic(X) == est.bic(X)
    if not isinstance(est, GMVAE):
        assert back.elbo_loss(X) == pytest.approx(est.elbo_loss(X), rel=1e-12)


def test_sgd_training_goes_on_after_load_as_without_it(tmp_path, data):
    X, _ = data
    est = GaussianMixture(3, covariance_type="diag", inference="sgd", batch_size=16, **QUIET)
    est.partial_fit(X[:120])
    est.save(tmp_path / "sgd.safetensors")
    back = GaussianMixture.load(tmp_path / "sgd.safetensors", device="cpu")
    est.partial_fit(X[120:])
    back.partial_fit(X[120:])
    np.testing.assert_array_equal(back.means_, est.means_)
    np.testing.assert_array_equal(back.covariances_, est.covariances_)
    assert back.history_ == est.history_


def test_saved_priors_and_random_state_come_back(tmp_path, data):
    import pyro.distributions as dist

    X, _ = data
    priors = {"means": dist.StudentT(3.0, 0.0, 5.0), "weights": dist.Dirichlet(torch.ones(3))}
    est = GaussianMixture(3, inference="svi", max_iter=20, priors=priors, progress=False,
                          device="cpu", random_state=np.random.RandomState(3)).fit(X)
    est.save(tmp_path / "priors.safetensors")
    back = GaussianMixture.load(tmp_path / "priors.safetensors", device="cpu")
    assert isinstance(back.priors["means"], dist.StudentT)
    assert float(back.priors["means"].df) == 3.0
    assert isinstance(back.random_state, np.random.RandomState)
    assert back.elbo_loss(X) == pytest.approx(est.elbo_loss(X), rel=1e-12)


@pytest.mark.parametrize("make", [
    lambda d: d.MultivariateNormal(torch.zeros(2), precision_matrix=2.0 * torch.eye(2)),
    lambda d: d.Wishart(torch.tensor(4.0), covariance_matrix=torch.eye(2)),
    lambda d: d.Categorical(logits=torch.tensor([0.0, 1.0, 2.0])),
])
def test_a_prior_whose_other_parametrisations_were_read_still_saves(tmp_path, make):
    # reading precision_matrix, scale_tril, probs ... caches them beside the constructor's
    # argument; the file keeps one parametrisation, and the density comes back
    import pyro.distributions as dist

    prior = make(dist)
    for name in ("covariance_matrix", "precision_matrix", "scale_tril", "probs", "logits"):
        getattr(prior, name, None)
    file_format.write(tmp_path / "p.safetensors", "estimator", {"prior": prior})
    back, _ = file_format.read(tmp_path / "p.safetensors", "estimator")
    value = prior.sample()
    assert type(back["prior"]) is type(prior)
    assert float(back["prior"].log_prob(value)) == pytest.approx(float(prior.log_prob(value)),
                                                                rel=1e-6)
