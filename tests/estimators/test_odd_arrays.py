"""Every kind of array a user may hand to fit and predict (the robustness issue's "Arrays").

Tensors with ``requires_grad``, on another dtype or device, reversed views (``X[::-1]``),
Fortran order, strided views, integer data, data frames, memory maps; an empty list is
refused with an error naming ``X``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from estimator_configs import COMMON, SMALL, make_small
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from ppl_mixtures import GaussianMixture, MixtureOfFactorAnalyzers, registry


def blobs(n_per: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(m, 0.4, (n_per, 3)) for m in (0.0, 3.0, 6.0)])



@pytest.fixture(scope="module")
def X():
    return blobs()


def test_every_estimator_is_covered():
    assert set(SMALL) == set(registry.FAMILIES)


@pytest.mark.parametrize("name", list(SMALL))
def test_a_tensor_that_requires_grad_is_accepted(X, name):
    tensor = torch.tensor(X, requires_grad=True)
    est = make_small(name).fit(tensor)
    labels = est.predict(tensor)
    assert labels.shape == (len(X),)
    np.testing.assert_array_equal(labels, est.predict(X))
    assert np.isfinite(est.score_samples(tensor)).all()
    assert tensor.grad is None  # the estimator never touched the user's graph


@pytest.mark.parametrize("name", list(SMALL))
def test_a_reversed_view_is_accepted(X, name):
    reversed_rows = X[::-1]
    est = make_small(name).fit(reversed_rows)
    np.testing.assert_array_equal(est.predict(reversed_rows), est.predict(X)[::-1])
    est.predict(X[:, ::-1][:, ::-1])  # reversed twice: negative strides again


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("empty", [[], (), np.array([])], ids=["list", "tuple", "array"])
def test_empty_data_is_refused_naming_x(name, empty):
    with pytest.raises(ValueError, match=r"^X is empty .*2-D array"):
        make_small(name).fit(empty)


def test_predict_on_empty_data_names_x(X):
    est = make_small("gmm").fit(X)
    with pytest.raises(ValueError, match=r"^X is empty"):
        est.predict([])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_tensors_of_another_dtype(X, dtype):
    tensor = torch.as_tensor(X * 10 if not dtype.is_floating_point else X).to(dtype)
    est = GaussianMixture(3, dtype="float32", **COMMON).fit(tensor)
    assert est.params_.means.dtype == torch.float32
    assert est.predict(tensor).shape == (len(X),)


def test_a_half_precision_tensor_follows_the_data_as_float32(X):
    est = GaussianMixture(3, **COMMON).fit(torch.as_tensor(X, dtype=torch.bfloat16))
    assert est.params_.means.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_tensor_fits_on_the_cpu_and_the_other_way_round(X):
    on_gpu = torch.tensor(X, device="cuda", requires_grad=True)
    est = GaussianMixture(3, **COMMON).fit(on_gpu)
    np.testing.assert_array_equal(est.predict(on_gpu), est.predict(X))
    gpu_est = GaussianMixture(3, progress=False, random_state=0, device="cuda").fit(X)
    assert gpu_est.params_.means.device.type == "cuda"
    np.testing.assert_array_equal(gpu_est.predict(torch.as_tensor(X)), gpu_est.predict(X))


def test_a_stream_of_tensors_that_require_grad(X):
    batches = [torch.tensor(X[i:i + 30], requires_grad=True) for i in range(0, len(X), 30)]
    batches[1] = batches[1].to(torch.bfloat16)
    est = GaussianMixture(3, covariance_type="diag", max_iter=5, **COMMON).fit(batches)
    assert est.predict(batches[0]).shape == (30,)


def test_a_read_only_array_and_a_read_only_memmap(X, tmp_path):
    frozen = X.copy()
    frozen.setflags(write=False)
    path = tmp_path / "x.npy"
    np.save(path, X[::-1])
    mapped = np.load(path, mmap_mode="r")
    for data in (frozen, mapped, mapped[::-1]):
        est = GaussianMixture(3, **COMMON).fit(data)
        assert est.predict(data).shape == (len(X),)


# ------------------------------------------------------------------------ property test


def arrange(values: np.ndarray, kind: str, dtype: str, order: str, step: int, folder):
    """``values`` as ``kind`` ("numpy", "tensor", "tensor_grad", "frame", "memmap", "list"),
    in ``dtype`` and ``order``, read through a view of step ``step`` (rows)."""
    array = np.rint(values * 10).astype(dtype) if dtype == "int64" else values.astype(dtype)
    if step == 2:  # every other row of a larger array: the view has a row stride of 2 rows
        array = np.repeat(array, 2, axis=0)
    elif step == -1:
        array = array[::-1]  # the view below undoes it, with negative strides
    array = np.asfortranarray(array) if order == "F" else np.ascontiguousarray(array)
    if kind == "memmap":
        path = folder / f"x-{dtype}-{order}-{step}-{np.random.default_rng().integers(1 << 30)}"
        mapped = np.memmap(path, dtype=array.dtype, mode="w+", shape=array.shape, order=order)
        mapped[:] = array
        mapped.flush()
        array = np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape, order=order)
    view = array[::step] if step != 1 else array
    if kind == "tensor":
        return torch.from_numpy(np.ascontiguousarray(view) if step < 0 else view)
    if kind == "tensor_grad":
        tensor = torch.tensor(np.ascontiguousarray(view), dtype=torch.float64)
        return tensor.requires_grad_(True)
    if kind == "frame":
        return pd.DataFrame(view, columns=["a", "b", "c"])
    if kind == "list":
        return view.tolist()
    return view


ESTIMATORS = {
    "gmm": lambda: GaussianMixture(3, **COMMON),
    "gmm-diag": lambda: GaussianMixture(3, covariance_type="diag", **COMMON),
    "mfa": lambda: MixtureOfFactorAnalyzers(3, n_factors=1, **COMMON),
}


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["numpy", "tensor", "tensor_grad", "frame", "memmap", "list"]),
       dtype=st.sampled_from(["float32", "float64", "int64"]),
       order=st.sampled_from(["C", "F"]),
       step=st.sampled_from([1, 2, -1]),
       name=st.sampled_from(list(ESTIMATORS)))
def test_any_kind_of_array_fits_and_a_larger_scale_keeps_the_partition(
        tmp_path_factory, kind, dtype, order, step, name):
    folder = tmp_path_factory.mktemp("arrays")
    values = blobs()
    data = arrange(values, kind, dtype, order, step, folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = ESTIMATORS[name]().fit(data).predict(data)
        scaled = arrange(values * 1000.0, kind, dtype, order, step, folder)
        scaled_labels = ESTIMATORS[name]().fit(scaled).predict(scaled)
    assert labels.shape == scaled_labels.shape == (len(values),)
    assert adjusted_rand_score(labels, scaled_labels) == 1.0 or caught


@pytest.mark.parametrize("name", list(SMALL))
def test_every_estimator_at_every_scale_keeps_the_partition_or_warns(X, name):
    """Scales 1e-12 ... 1e12 for every registered estimator: no exception from outside
    ppl_mixtures, and the partition of X itself, or a warning that names the scale."""
    reference = make_small(name).fit(X).predict(X)
    for scale in (1e-12, 1e-6, 1e6, 1e12):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            labels = make_small(name).fit(X * scale).predict(X * scale)
        assert labels.shape == (len(X),)
        same = adjusted_rand_score(reference, labels) == 1.0
        assert same or caught, f"{name} at scale {scale:g}: another partition, no warning"
