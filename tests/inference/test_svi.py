"""Tests of the generic SVI trainer on a tiny 1-D two-component Gaussian mixture."""

from __future__ import annotations

import io
import math
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal, init_to_value

from ppl_mixtures import io as file_format
from ppl_mixtures.inference.svi import SVIResult, SVITrainer

TRUE_LOCS = (-2.0, 2.0)
SCALE = 1.0
NUM_SAMPLES = 200


def mixture_model(x: torch.Tensor, subsample: torch.Tensor | None = None) -> None:
    """Two-component 1-D mixture with a fixed scale; ``x`` has shape (N,)."""
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0], subsample=subsample) as rows:
        assignment = pyro.sample(
            "assignment", dist.Categorical(weights), infer={"enumerate": "parallel"}
        )
        pyro.sample("obs", dist.Normal(locs[assignment], SCALE), obs=x[rows])


mixture_model.max_plate_nesting = 1


def make_guide(kind: str = "delta"):
    """A point-mass (or mean-field normal) guide over the globals, ``assignment`` hidden."""
    init = init_to_value(values={"locs": torch.tensor([-1.0, 1.0]), "weights": torch.ones(2) / 2})
    blocked = poutine.block(mixture_model, hide=["assignment"])
    if kind == "delta":
        return AutoDelta(blocked, init_loc_fn=init)
    return AutoNormal(blocked, init_loc_fn=init, init_scale=0.05)


def make_data(num_samples: int = NUM_SAMPLES, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(2, (num_samples,), generator=generator)
    noise = torch.randn(num_samples, generator=generator)
    return torch.tensor(TRUE_LOCS)[labels] + SCALE * noise


def fitted_locs() -> torch.Tensor:
    return pyro.param("AutoDelta.locs").detach().sort().values


def test_fit_decreases_loss_and_recovers_locs():
    x = make_data()
    trainer = SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=300, tol=0, progress=False)
    result = trainer.fit(x)
    assert isinstance(result, SVIResult)
    assert result.n_steps == len(result.history) == 300
    assert not result.converged and result.seconds > 0
    assert result.history[-1] < result.history[0] - 0.4  # measured: 2.69 -> 2.16 per sample
    # measured error 0.09 on this data set (at most 0.24 over six data seeds)
    assert torch.allclose(fitted_locs(), torch.tensor(TRUE_LOCS), atol=0.3)
    assert trainer.evaluate_loss(x) == pytest.approx(result.history[-1], rel=1e-3)


def _mixture_log_joint(x, weights, locs, rows):
    """Hand-marginalised log joint of the globals and the rows ``rows``, scaled by N / B."""
    log_prior = dist.Dirichlet(torch.ones(2)).log_prob(weights)
    log_prior = log_prior + dist.Normal(0.0, 10.0).log_prob(locs).sum()
    component = weights.log() + dist.Normal(locs, SCALE).log_prob(x[rows].unsqueeze(-1))
    return log_prior + x.shape[0] / rows.shape[0] * component.logsumexp(-1).sum()


def test_minibatch_loss_is_scaled_to_the_full_data():
    x = make_data()
    guide = make_guide()
    rows = torch.randperm(NUM_SAMPLES)[:50]
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(mixture_model, guide, x, subsample=rows)
    weights, locs = pyro.param("AutoDelta.weights"), pyro.param("AutoDelta.locs")
    expected = -_mixture_log_joint(x, weights, locs, rows)
    assert loss == pytest.approx(expected.item(), rel=1e-12)


def test_epoch_of_minibatch_losses_averages_to_the_full_loss():
    x = make_data()
    frozen = pyro.optim.Adam({"lr": 0.0})  # parameters stay at their initial values
    trainer = SVITrainer(
        mixture_model, make_guide(), optimizer=frozen, batch_size=50, max_steps=4, tol=0
    )
    result = trainer.fit(x)
    epoch_mean = sum(result.history) / 4
    assert epoch_mean == pytest.approx(trainer.evaluate_loss(x), rel=1e-12)
    assert len(set(result.history)) == 4  # four different batches


def test_every_row_is_seen_once_per_epoch():
    seen = []

    def recording_model(x, subsample=None):
        seen.append(subsample)
        mixture_model(x, subsample)

    recording_model.max_plate_nesting = 1
    guide = AutoDelta(poutine.block(recording_model, hide=["assignment"]))
    trainer = SVITrainer(recording_model, guide, batch_size=60, max_steps=4, tol=0, progress=False)
    trainer.fit(make_data())
    batches = [b for i, b in enumerate(seen) if i == 0 or b is not seen[i - 1]]  # one per step
    assert [len(b) for b in batches] == [60, 60, 60, 20]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(NUM_SAMPLES))


def test_early_stopping_on_an_easy_problem():
    x = make_data()
    trainer = SVITrainer(
        mixture_model, make_guide(), lr=0.05, max_steps=2000, tol=1e-6, patience=10
    )
    result = trainer.fit(x)
    assert result.converged
    assert result.n_steps == len(result.history) < 500  # measured: step 125 (124-128 over seeds)
    assert torch.allclose(fitted_locs(), torch.tensor(TRUE_LOCS), atol=0.3)


def test_tol_zero_runs_every_step():
    trainer = SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=30, tol=0)
    result = trainer.fit(make_data())
    assert result.n_steps == len(result.history) == 30
    assert not result.converged


def test_early_stopping_rule_is_the_documented_one(monkeypatch, tmp_path):
    monkeypatch.setattr(pyro.infer.SVI, "step", lambda self, *args, **kwargs: 100.0)
    path = tmp_path / "run.pt"
    trainer = SVITrainer(
        mixture_model, make_guide(), max_steps=100, tol=1e-3, patience=5, checkpoint_path=path
    )
    result = trainer.fit(make_data())
    # a constant loss stalls at every check from step 2 on: five checks end at step 6
    assert result.converged and result.n_steps == 6
    assert result.history == [100.0 / NUM_SAMPLES] * 6
    # a converged checkpoint is returned as is
    resumed = trainer.fit(make_data(), resume=True)
    assert resumed.converged and resumed.history == result.history


@pytest.mark.parametrize("batch_size", [None, 50], ids=["full_batch", "minibatch"])
@pytest.mark.parametrize("guide_kind", ["delta", "normal"])
def test_resume_matches_an_uninterrupted_run(tmp_path, batch_size, guide_kind):
    x = make_data()
    steps = 20
    settings = dict(lr=0.05, batch_size=batch_size, tol=1e-4, patience=50, seed=3)

    def run(max_steps, path, resume=False):
        trainer = SVITrainer(
            mixture_model,
            make_guide(guide_kind),
            max_steps=max_steps,
            checkpoint_path=path,
            checkpoint_every=7,
            **settings,
        )
        result = trainer.fit(x, resume=resume)
        store = pyro.get_param_store()
        params = {name: store.get_param(name).detach().clone() for name in store.keys()}
        pyro.clear_param_store()
        return result, params

    straight, straight_params = run(2 * steps, tmp_path / "straight.pt")
    first, _ = run(steps, tmp_path / "stopped.pt")
    pyro.set_rng_seed(12345)  # a new process would start from another random state
    resumed, resumed_params = run(2 * steps, tmp_path / "stopped.pt", resume=True)

    assert first.history == straight.history[:steps]
    assert resumed.history == straight.history
    assert resumed.n_steps == 2 * steps
    assert straight_params.keys() == resumed_params.keys()
    for name, value in straight_params.items():
        assert torch.equal(value, resumed_params[name]), name


def test_resume_without_checkpoint_starts_afresh(tmp_path):
    trainer = SVITrainer(
        mixture_model, make_guide(), max_steps=5, tol=0, checkpoint_path=tmp_path / "none.pt"
    )
    assert trainer.fit(make_data(), resume=True).n_steps == 5


def test_resume_warns_when_settings_differ(tmp_path):
    x = make_data()
    path = tmp_path / "run.pt"
    SVITrainer(mixture_model, make_guide(), max_steps=3, checkpoint_path=path).fit(x)
    trainer = SVITrainer(mixture_model, make_guide(), lr=0.1, max_steps=6, checkpoint_path=path)
    with pytest.warns(UserWarning, match="lr"):
        trainer.fit(x, resume=True)


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    x = make_data()
    path = tmp_path / "run.pt"
    trainer = SVITrainer(
        mixture_model, make_guide(), max_steps=25, tol=0, checkpoint_path=path, checkpoint_every=10
    )
    trainer.fit(x)
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    checkpoint, _ = file_format.read(path, "svi-checkpoint")
    assert checkpoint["step"] == 25 and len(checkpoint["progress"]["history"]) == 25
    assert {"param_store", "optimizer", "sampler", "rng", "config"} <= checkpoint.keys()
    assert set(checkpoint["optimizer"]) == {"AutoDelta.weights", "AutoDelta.locs"}

    # a write that dies half-way (after the bytes, before the rename) leaves the previous
    # checkpoint whole and no temporary file behind
    real_fsync = file_format.os.fsync
    calls = []

    def failing_fsync(descriptor):
        calls.append(descriptor)
        if len(calls) == 2:
            raise OSError("disk full")
        real_fsync(descriptor)

    monkeypatch.setattr(file_format.os, "fsync", failing_fsync)
    pyro.clear_param_store()
    trainer = SVITrainer(
        mixture_model, make_guide(), max_steps=25, tol=0, checkpoint_path=path, checkpoint_every=10
    )
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(x)
    monkeypatch.undo()
    assert file_format.read(path, "svi-checkpoint")[0]["step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_overflowing_loss_raises_floating_point_error():
    x = make_data()
    x[0] = 1e200  # its squared distance to any mean overflows to inf
    trainer = SVITrainer(mixture_model, make_guide(), max_steps=10)
    with pytest.raises(FloatingPointError, match=r"step 1\b.*learning rate"):
        trainer.fit(x)


def test_nan_loss_names_the_step(monkeypatch):
    losses = iter([1.0, 2.0, math.nan])
    monkeypatch.setattr(pyro.infer.SVI, "step", lambda self, *args, **kwargs: next(losses))
    trainer = SVITrainer(mixture_model, make_guide(), max_steps=10, tol=0)
    with pytest.raises(FloatingPointError, match=r"nan at step 3\b"):
        trainer.fit(make_data())


@pytest.mark.parametrize("progress", [False, True])
def test_no_output_without_a_terminal(capsys, progress):
    SVITrainer(mixture_model, make_guide(), max_steps=5, progress=progress).fit(make_data())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    SVITrainer(mixture_model, make_guide(), max_steps=5, tol=0).fit(make_data())
    assert "SVI:" in terminal.getvalue()


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="optimizer='sgdd'.*adam"):
        SVITrainer(mixture_model, make_guide(), optimizer="sgdd")


# ------------------------------------------------------------------------- streams of batches


def test_stream_step_scales_the_batch_like_a_plate_subsample():
    """A batch of B rows of N scored with N / B == Pyro's subsample scaling of those rows."""
    x = make_data()
    rows = torch.arange(40, 90)
    pyro.clear_param_store()
    guide = make_guide()
    expected = TraceEnum_ELBO(max_plate_nesting=1).loss(mixture_model, guide, x, subsample=rows)
    trainer = SVITrainer(mixture_model, guide, lr=0.0, max_steps=1, tol=0, progress=False)
    result = trainer.fit_batches([x[rows]], n_samples=NUM_SAMPLES)
    assert result.history[0] == pytest.approx(expected / NUM_SAMPLES, rel=1e-12)


def test_stream_cycles_a_list_and_reads_an_iterator_once():
    x = make_data()
    batches = list(torch.split(x, 80))  # 80, 80, 40 rows
    pyro.clear_param_store()
    cycled = SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=7, tol=0,
                        progress=False).fit_batches(batches, n_samples=NUM_SAMPLES)
    assert cycled.n_steps == 7
    pyro.clear_param_store()
    once = SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=7, tol=0,
                      progress=False).fit_batches(iter(batches), n_samples=NUM_SAMPLES)
    assert once.n_steps == 3 and once.history == cycled.history[:3]


def test_stream_of_loader_pairs_recovers_the_locs():
    from torch.utils.data import DataLoader, TensorDataset

    x = make_data(1000)
    loader = DataLoader(TensorDataset(x, torch.zeros(1000)), batch_size=100, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    pyro.clear_param_store()
    SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=400, tol=0,
               progress=False).fit_batches(loader, n_samples=len(loader.dataset))
    torch.testing.assert_close(fitted_locs(), torch.tensor(TRUE_LOCS), atol=0.2, rtol=0)


def test_stream_resumes_like_an_uninterrupted_run(tmp_path):
    x = make_data()
    batches = list(torch.split(x, 50))  # 4 batches: the stop falls at the end of a pass
    path = tmp_path / "stream.pt"
    pyro.clear_param_store()
    SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=8, tol=0,
               progress=False).fit_batches(batches, n_samples=NUM_SAMPLES)
    straight = fitted_locs()
    pyro.clear_param_store()
    SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=4, tol=0, progress=False,
               checkpoint_path=path).fit_batches(batches, n_samples=NUM_SAMPLES)
    pyro.clear_param_store()
    resumed = SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=8, tol=0,
                         progress=False, checkpoint_path=path)
    result = resumed.fit_batches(batches, n_samples=NUM_SAMPLES, resume=True)
    assert result.n_steps == 8
    torch.testing.assert_close(fitted_locs(), straight, rtol=0, atol=0)


def test_stream_resumes_mid_pass_like_an_uninterrupted_run(tmp_path):
    x = make_data()
    batches = list(torch.split(x, 50))  # 4 batches: the stop at step 6 falls mid-pass
    path = tmp_path / "stream.pt"
    pyro.clear_param_store()
    SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=10, tol=0,
               progress=False).fit_batches(batches, n_samples=NUM_SAMPLES)
    straight = fitted_locs()
    pyro.clear_param_store()
    SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=6, tol=0, progress=False,
               checkpoint_path=path).fit_batches(batches, n_samples=NUM_SAMPLES)
    assert file_format.read(path, "svi-checkpoint")[0]["progress"]["stream_position"] == 2
    pyro.clear_param_store()
    resumed = SVITrainer(mixture_model, make_guide(), lr=0.05, max_steps=10, tol=0,
                         progress=False, checkpoint_path=path)
    assert resumed.fit_batches(batches, n_samples=NUM_SAMPLES, resume=True).n_steps == 10
    torch.testing.assert_close(fitted_locs(), straight, rtol=0, atol=0)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    from ppl_mixtures import GaussianMixture
    from ppl_mixtures.datasets import make_gmm

    x = make_gmm(n_samples=90, n_components=3, n_features=2, random_state=0)[0]
    path = tmp_path / "run.safetensors"
    options = dict(inference="svi", max_iter=5, checkpoint_path=path, progress=False,
                   device="cpu", random_state=0)
    GaussianMixture(3, **options).fit(x)
    with pytest.raises(ValueError, match=r"belongs to another run \(model_settings"):
        GaussianMixture(2, **options).fit(x, resume=True)
    with pytest.raises(ValueError, match="data_fingerprint"):
        GaussianMixture(3, **options).fit(x + 1.0, resume=True)
    with pytest.raises(ValueError, match="belongs to another run"):
        GaussianMixture(3, covariance_type="diag", **options).fit(x, resume=True)
    GaussianMixture(3, **{**options, "max_iter": 8}).fit(x, resume=True)  # the same run goes on


@pytest.mark.parametrize("batches, n_samples, error, match", [
    ([], 10, ValueError, "batches is empty"),
    ([torch.zeros(3)], 0, ValueError, "n_samples=0"),
    ([torch.zeros(3)], 2.5, ValueError, "n_samples=2.5"),
    (["rows"], 10, TypeError, "must be a Tensor"),
])
def test_stream_errors_name_the_argument(batches, n_samples, error, match):
    pyro.clear_param_store()
    trainer = SVITrainer(mixture_model, make_guide(), max_steps=2, progress=False)
    with pytest.raises(error, match=match):
        trainer.fit_batches(batches, n_samples=n_samples)


def test_evaluate_loss_over_batches_equals_the_whole():
    x = make_data()
    pyro.clear_param_store()
    trainer = SVITrainer(mixture_model, make_guide(), max_steps=1, progress=False)
    whole = trainer.evaluate_loss(x)
    assert trainer.evaluate_loss_batches(torch.split(x, 70), NUM_SAMPLES) == pytest.approx(
        whole, rel=1e-12)
