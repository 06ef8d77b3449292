"""The GMVAE on a stream of batches: equal to the in-memory fit fed the same batches, resumable.

The in-memory fit draws its batches from the fit's seed: the pre-training shuffles the rows of
every epoch (``torch.randperm`` from a generator seeded with it, cut into
``gmvae_pretrain.PRETRAIN_BATCH_SIZE`` rows), the GMM start encodes the rows in their order,
and SVI's sampler draws its own permutations from the same seed (cut into ``batch_size``
rows). :class:`Replay` yields exactly those batches, one planned pass per read, so the
streamed fit must take the in-memory fit's steps.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ppl_mixtures.estimators.gmvae import GMVAE
from ppl_mixtures.inference import gmvae_pretrain, gmvae_stream
from ppl_mixtures.inference.init import resolve_generator

TINY_ARGS = dict(latent_dim=2, w_dim=2, hidden_dims=(8,), prior_hidden_dims=(8,))


class Replay:
    """A stream whose k-th pass yields ``x[index]`` for the index batches ``plan[k]``."""

    def __init__(self, x: np.ndarray, plan: list[list[torch.Tensor]],
                 weights: np.ndarray | None = None) -> None:
        self.x, self.plan, self.weights, self.passes = x, plan, weights, 0

    def __iter__(self):
        if self.passes >= len(self.plan):
            raise AssertionError(f"the fit read the stream more than the {len(self.plan)} "
                                 "planned passes")
        index_batches = self.plan[self.passes]
        self.passes += 1
        for index in index_batches:
            rows = index.numpy()
            if self.weights is None:
                yield self.x[rows]
            else:
                yield self.x[rows], self.weights[rows]


def _in_memory_plan(n_rows: int, est: GMVAE) -> list[list[torch.Tensor]]:
    """The passes a streamed fit makes, each in the order of the in-memory fit's batches."""
    seed = int(torch.randint(0, 2**31 - 1, (1,),
                             generator=resolve_generator(est.random_state, "cpu")))
    natural = [torch.arange(n_rows)]
    # the first batch read ahead, then the counting pass, which counts the SVI steps of a pass
    plan = [natural, list(torch.arange(n_rows).split(est.batch_size))]
    pretrain = torch.Generator().manual_seed(seed)
    plan += [list(torch.randperm(n_rows, generator=pretrain).split(
        gmvae_pretrain.PRETRAIN_BATCH_SIZE)) for _ in range(est.pretrain_epochs)]
    plan.append(natural)  # the GMM start encodes the rows in their order
    if est.init_w_encoder:  # and once more to start the w head
        plan.append(natural)
    sampler = torch.Generator().manual_seed(seed)  # none on full batches: the rows in order
    plan += [natural if est.batch_size >= n_rows else
             list(torch.randperm(n_rows, generator=sampler).split(est.batch_size))
             for _ in range(est.max_iter)]
    plan.append(natural)  # lower_bound_
    return plan


def _data(n_rows: int = 300, n_features: int = 6) -> np.ndarray:
    return np.random.default_rng(0).random((n_rows, n_features)).astype(np.float32)


def _estimator(**kwargs) -> GMVAE:
    args = dict(n_components=3, batch_size=64, pretrain_epochs=2, max_iter=2, progress=False,
                random_state=0, device="cpu", init_restarts=3, **TINY_ARGS)
    return GMVAE(**{**args, **kwargs})


def _assert_same_fit(streamed: GMVAE, memory: GMVAE, X: np.ndarray) -> None:
    # measured (float32, seeds 0-2, both tests): pre-training and SVI losses and the
    # parameters bit-equal; lower_bound_ (summed batch by batch) within 8e-8 relative
    assert streamed.pretrain_history_ == pytest.approx(memory.pretrain_history_, rel=1e-6)
    np.testing.assert_allclose(streamed.history_, memory.history_, rtol=1e-6)
    for name, value in memory.params_.items():
        torch.testing.assert_close(streamed.params_[name], value, rtol=1e-5, atol=1e-6)
    assert streamed.lower_bound_ == pytest.approx(memory.lower_bound_, rel=1e-6)
    np.testing.assert_array_equal(streamed.predict(X), memory.predict(X))


@pytest.mark.parametrize("w_encoder", [False, True])
def test_stream_equals_in_memory_fit_for_the_same_batches(w_encoder):
    """Pre-training, the GMM start (with the w head started at the factor posterior, one
    pass more) and SVI (minibatches of 64 of 300 rows) take the same steps."""
    X = _data()
    memory = _estimator(init_w_encoder=w_encoder).fit(X)
    stream = Replay(X, _in_memory_plan(X.shape[0], memory))
    streamed = _estimator(init_w_encoder=w_encoder).fit(stream)
    assert stream.passes == len(stream.plan) == 2 + 2 + 1 + 2 + 1 + w_encoder
    assert streamed.init_ == memory.init_ == "gmm"
    assert streamed.n_iter_ == memory.n_iter_ == 2 * math.ceil(300 / 64)
    _assert_same_fit(streamed, memory, X)


def test_weighted_stream_equals_weighted_in_memory_fit():
    """Batches (x, w): weighted pre-training (2 batches an epoch), GMM start (equal weights,
    2 restarts) and SVI (prior network frozen).

    SVI on full batches: on weighted minibatches the two paths estimate the full-data ELBO
    differently (in memory the batch's terms are scaled by N / B, in a stream by
    sum(w) / sum(w_batch)), both unbiased, so their steps differ there.
    """
    X = _data(200)
    weights = np.random.default_rng(1).integers(0, 3, X.shape[0]).astype(np.float32)
    args = dict(pretrain_epochs=2, max_iter=3, batch_size=200, init_factor_scale=0.5,
                init_equal_weights=True, init_restarts=2, freeze_prior=True)
    memory = _estimator(**args).fit(X, sample_weight=weights)
    stream = Replay(X, _in_memory_plan(X.shape[0], memory), weights)
    streamed = _estimator(**args).fit(stream, sample_weight="batches")
    assert memory.init_ == "gmm" and len(streamed.history_) == 3
    _assert_same_fit(streamed, memory, X)


def test_dataloader_and_callable_streams_fit_and_resume(tmp_path, monkeypatch):
    """A run stopped mid-pass (at a checkpoint) and resumed equals the uninterrupted run.

    Checkpoints every 10 steps (the estimator's trainer writes one every 100); batches of 8 of
    64 rows, 3 epochs: 24 steps. The run breaks when it reads its 23rd SVI batch, so the
    last checkpoint (step 20) falls in the middle of epoch 3 (4 of its 8 batches used),
    which the resumed run skips.
    """
    monkeypatch.setattr(gmvae_stream, "SVITrainer",
                        functools.partial(gmvae_stream.SVITrainer, checkpoint_every=10))
    X = torch.as_tensor(_data(64))
    loader = DataLoader(TensorDataset(X), batch_size=8, shuffle=False)
    args = dict(batch_size=8, pretrain_epochs=1, max_iter=3)
    full = _estimator(checkpoint_path=tmp_path / "full.safetensors", **args).fit(loader)
    assert full.n_iter_ == 24

    class Interrupted:
        """The loader, broken at the 23rd SVI batch (after the batch read ahead and 3 passes)."""

        def __init__(self) -> None:
            self.read = 0

        def __call__(self):
            for batch in loader:
                self.read += 1
                if self.read == 1 + 8 * 3 + 23:
                    raise KeyboardInterrupt
                yield batch

    path = tmp_path / "split.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _estimator(checkpoint_path=path, **args).fit(Interrupted())
    resumed = _estimator(checkpoint_path=path, **args).fit(lambda: iter(loader), resume=True)
    assert resumed.pretrain_history_ == [] and resumed.n_iter_ == 24
    assert resumed.history_ == full.history_
    for name, value in full.params_.items():
        torch.testing.assert_close(resumed.params_[name], value, rtol=0, atol=0)


def test_latent_sample_keeps_all_rows_or_a_uniform_reservoir():
    torch.manual_seed(0)
    networks = _estimator().fit(_data(40)).networks_
    y = torch.as_tensor(_data(250))
    batches = [(y[i:i + 32], None) for i in range(0, 250, 32)]
    latents = gmvae_pretrain.latent_means(networks, y)
    everything, no_weights = gmvae_stream.latent_sample(networks, batches, 250,
                                                        torch.Generator().manual_seed(0))
    torch.testing.assert_close(everything, latents)
    assert no_weights is None
    # a reservoir of 50 rows: distinct rows of the data, each row kept with p = 50 / 250
    counts = np.zeros(250)
    for seed in range(200):
        sample, _ = gmvae_stream.latent_sample(networks, batches, 50,
                                               torch.Generator().manual_seed(seed))
        match = (sample[:, None, :] == latents[None]).all(-1)
        assert sample.shape == (50, 2) and bool((match.sum(1) == 1).all())
        counts += match.any(0).numpy()
    # 200 draws, p = 0.2: mean 40, sd 5.7 per row; the first and the last rows alike
    assert 30 < counts[:50].mean() < 50 and 30 < counts[-50:].mean() < 50


def test_one_shot_iterators_and_bad_batches_are_refused():
    X = _data(64)
    batches = [X[i:i + 16] for i in range(0, 64, 16)]
    with pytest.raises(ValueError, match="iterator.*callable that returns a new iterator"):
        _estimator().fit(iter(batches))
    shared = iter(batches)  # a callable must give a new iterator per pass, not this one
    with pytest.raises(ValueError, match="none at a later one"):
        _estimator().fit(lambda: shared)
    with pytest.raises(ValueError, match="features"):
        _estimator().fit([X[:16], X[16:32, :4]])
    with pytest.raises(TypeError, match="X\\(\\) returned a int"):
        _estimator().fit(lambda: 3)
    with pytest.raises(ValueError, match="distributed"):
        _estimator(distributed=True).fit(batches)



# ------------------------------------------------------------------- readers of files on disk


def test_npy_batches_read_a_memory_map_in_order_or_shuffled(tmp_path):
    from ppl_mixtures.datasets import scale_features
    from ppl_mixtures.datasets.files import NpyBatches

    X = np.random.default_rng(0).normal(3.0, 2.0, (50, 4))
    np.save(tmp_path / "x.npy", X)
    reader = NpyBatches(tmp_path / "x.npy", 16)
    assert isinstance(reader.array, np.memmap) and len(reader) == 4
    assert [batch.shape[0] for batch in reader] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(list(reader)), X)

    def rows(passes):  # each pass as a tuple of row indices (X's rows are distinct)
        return [tuple(np.flatnonzero((X == row).all(1))[0] for batch in p for row in batch)
                for p in passes]

    shuffled = NpyBatches(tmp_path / "x.npy", 16, shuffle=True, random_state=3)
    first, second = rows([list(shuffled), list(shuffled)])
    assert sorted(first) == list(range(50)) and first != second
    assert rows([list(NpyBatches(tmp_path / "x.npy", 16, shuffle=True, random_state=3))]) == [
        first]
    once = NpyBatches(tmp_path / "x.npy", 16, shuffle="once", random_state=3)
    again = rows([list(once), list(once)])
    assert again[0] == again[1] and again[0] != tuple(range(50))
    for scale in ("standard", "minmax"):
        scaled = np.concatenate(list(NpyBatches(tmp_path / "x.npy", 16, scale=scale)))
        np.testing.assert_allclose(scaled, scale_features(X, scale), rtol=0, atol=1e-12)


def test_npy_batches_flatten_images_and_refuse_what_they_cannot_stream(tmp_path):
    from ppl_mixtures.datasets.files import NpyBatches

    images = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(5, 3, 3)
    np.save(tmp_path / "images.npy", images)
    reader = NpyBatches(tmp_path / "images.npy", 2, divide_by=255.0, dtype=np.float32)
    batch = next(iter(reader))
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, images[:2].reshape(2, 9) / 255.0)
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(ValueError, match="reshape"):
        NpyBatches(tmp_path / "flat.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="npz"):
        NpyBatches(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="batch_size"):
        NpyBatches(tmp_path / "images.npy", 0)
    with pytest.raises(FileNotFoundError):
        NpyBatches(tmp_path / "absent.npy")


def test_idx_batches_equal_the_whole_file_loader(tmp_path):
    import gzip
    import struct

    from ppl_mixtures.datasets import load_mnist_idx
    from ppl_mixtures.datasets.files import IdxBatches

    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4), dtype=np.uint8)
    content = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 7, 4, 4)
    content += images.tobytes()
    (tmp_path / "images-idx3-ubyte").write_bytes(content)
    reader = IdxBatches(tmp_path / "images-idx3-ubyte", 3)
    np.testing.assert_allclose(np.concatenate(list(reader)),
                               load_mnist_idx(tmp_path / "images-idx3-ubyte")[0], rtol=1e-15)
    (tmp_path / "images.gz").write_bytes(gzip.compress(content))
    with pytest.raises(ValueError, match="gunzip"):
        IdxBatches(tmp_path / "images.gz")
    (tmp_path / "short").write_bytes(content[:-5])
    with pytest.raises(ValueError, match="needs"):
        IdxBatches(tmp_path / "short")


def test_gmvae_fit_on_npy_batches_equals_fit_on_the_same_list(tmp_path):
    from ppl_mixtures.datasets.files import NpyBatches

    X = _data(100)
    np.save(tmp_path / "x.npy", X)
    reader = NpyBatches(tmp_path / "x.npy", 32, shuffle="once", dtype=np.float32)
    same = [batch.copy() for batch in reader]
    args = dict(max_iter=1, pretrain_epochs=1)
    from_file = _estimator(**args).fit(reader)
    from_list = _estimator(**args).fit(same)
    assert from_file.history_ == from_list.history_
    assert from_file.lower_bound_ == from_list.lower_bound_


# --------------------------------------------------------------------------- command line


def test_cli_fit_gmvae_streams_a_npy_file(tmp_path, capsys):
    from ppl_mixtures.cli import main

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(center, 0.3, (100, 6)) for center in (-2, 0, 2)])
    np.save(tmp_path / "small.npy", X)
    np.save(tmp_path / "labels.npy", np.repeat([0, 1, 2], 100))
    common = ["fit", "gmvae", "--data", str(tmp_path / "small.npy"), "--stream",
              "--max-iter", "2", "--pretrain-epochs", "2", "--batch-size", "32",
              "--no-progress", "--device", "cpu"]
    out = tmp_path / "run"
    assert main([*common, "--labels", str(tmp_path / "labels.npy"), "--out", str(out)]) == 0
    summary = __import__("json").loads((out / "summary.json").read_text())
    # measured: ARI 1.0 on these three blobs (seed 0)
    assert summary["n_samples"] == 300 and summary["n_components"] == 3
    assert summary["steps"] == 2 * math.ceil(300 / 32) and summary["ari"] > 0.95
    assert (out / "model.safetensors").exists() and (out / "latent.png").exists()
    # the rows are shuffled once, so a resumed run continues the same batches
    split = tmp_path / "split"
    assert main([*common, "-k", "3", "--max-iter", "1", "--out", str(split)]) == 0
    assert main([*common, "-k", "3", "--resume", "--out", str(split)]) == 0
    resumed = __import__("json").loads((split / "summary.json").read_text())
    assert resumed["elbo_per_sample"] == pytest.approx(summary["elbo_per_sample"], rel=1e-9)
    capsys.readouterr()
    assert main(["fit", "gmvae", "--data", "pinwheel", "--stream", "--out",
                 str(tmp_path / "no")]) == 2
    assert "--stream reads a .npy" in capsys.readouterr().err
