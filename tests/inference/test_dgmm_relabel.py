"""The DGMM's relabelling of the deeper layers by likelihood (``relabel=True``): which
labellings it tries, that it never lowers the likelihood, that it restores a swapped labelling
EM alone keeps, and the estimator's argument (validation, off for plain EM, equal on a
stream)."""

import numpy as np
import pytest
import torch
from dgmm_helpers import (
    assert_move_validated_and_unused_by_plain_em,
    assert_stream_fit_moves_as_in_memory,
    fit_from,
    settled_layerwise_starts,
)

from ppl_mixtures.datasets import make_dgmm
from ppl_mixtures.inference.em import dgmm as em_dgmm
from ppl_mixtures.inference.em import dgmm_relabel
from ppl_mixtures.metrics import adjusted_rand_score
from ppl_mixtures.models import dgmm

SIZES, FACTORS = (2, 2), (4, 2)


def layer_ari(x, params, layers, layer):
    paths = em_dgmm.responsibilities(x, params)[0].argmax(-1)
    return adjusted_rand_score(layers[:, layer], dgmm.layer_labels(paths, SIZES)[:, layer].numpy())


@pytest.fixture(scope="module")
def swapped():
    """``make_dgmm(600, 9, (2, 2), (4, 2))`` (seed 0) and a fit whose second-layer labels are
    swapped under first-layer component 1: the truth relabelled there
    (:func:`dgmm_relabel.relabelled`), then 20 SQUAREM cycles, which keep the swap (measured:
    second-layer ARI below 0.01, 10.35 nats per point against 10.45 from the truth)."""
    X, layers, _, params = make_dgmm(600, 9, SIZES, FACTORS, random_state=0, standardize=True)
    x = torch.as_tensor(X)
    truth = dgmm.DGMMParams.from_numpy(params)
    start = dgmm_relabel.relabelled(em_dgmm.e_step(x, truth), 1, 1, (1, 0))
    stuck, history = em_dgmm.accelerate(x, start, 20, 1e-6)
    settled, reference = em_dgmm.accelerate(x, truth, 20, 1e-6)
    return X, x, layers, stuck, history[-1], reference[-1]


def test_groups_are_every_parent_and_tree_order():
    """Per layer l >= 2 and component of layer l - 1: the sub-path orders that respect the
    tree (G_l! orders of layer l, each child's own orders below), the identity left out;
    beyond MAX_RELABEL_ORDERS, layer l's own labels only (transpositions for G_l > 3)."""
    groups = dgmm_relabel.relabel_groups((3, 3, 2))
    assert [(layer, parent) for layer, parent, _ in groups] == [
        (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    second = groups[0][2]
    assert len(second) == 3 * 2 * 2 ** 3 - 1 == len(set(second))
    assert (0, 1, 2, 3, 5, 4) in second and (2, 3, 0, 1, 4, 5) in second
    assert (0, 2, 1, 3, 4, 5) not in second  # would split a second-layer component's children
    assert all(sorted(order) == list(range(6)) for order in second)
    assert all(orders == [(1, 0)] for layer, _, orders in groups if layer == 2)
    assert dgmm_relabel.relabel_groups((4,)) == []
    assert [len(orders) for _, _, orders in dgmm_relabel.relabel_groups((1, 4))] == [6]
    big = dgmm_relabel.relabel_groups((2, 4, 3))[0][2]  # 7 * 6**4 orders: layer 2's alone
    assert len(big) == 6
    for order in big:  # whole blocks of three sub-paths move: layer 3 keeps its labels
        assert all(order[3 * k:3 * k + 3] == tuple(range(order[3 * k], order[3 * k] + 3))
                   for k in range(4))


def test_relabelled_moves_only_the_parents_frame(swapped):
    """Only the parent's intercept and loadings change; its rows then take the swapped labels
    (the map is close to exact on the truth: the likelihood barely moves)."""
    X, x, layers, _, _, _ = swapped
    _, _, _, params = make_dgmm(600, 9, SIZES, FACTORS, random_state=0, standardize=True)
    truth = dgmm.DGMMParams.from_numpy(params)
    moved = dgmm_relabel.relabelled(em_dgmm.e_step(x, truth), 1, 1, (1, 0))
    torch.testing.assert_close(moved.eta[0][0], truth.eta[0][0])
    torch.testing.assert_close(moved.loadings[0][0], truth.loadings[0][0])
    assert not torch.allclose(moved.loadings[0][1], truth.loadings[0][1])
    for name in ("weights", "noise_variances"):
        for got, want in zip(getattr(moved, name), getattr(truth, name), strict=True):
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(moved.eta[1], truth.eta[1])
    torch.testing.assert_close(moved.loadings[1], truth.loadings[1])
    before = float(dgmm.log_likelihood(x, truth).mean())
    assert float(dgmm.log_likelihood(x, moved).mean()) == pytest.approx(before, abs=0.5)
    paths = em_dgmm.responsibilities(x, moved)[0].argmax(-1)
    labels = dgmm.layer_labels(paths, SIZES).numpy()
    under = layers[:, 0] == 1
    assert adjusted_rand_score(1 - layers[under, 1], labels[under, 1]) > 0.95
    assert np.mean(labels[under, 1] == 1 - layers[under, 1]) > 0.95


def test_relabel_restores_the_swapped_labelling(swapped):
    """From the stuck fit the move finds the consistent labelling (second-layer ARI 1.0) and
    the likelihood of EM from the truth (measured: within 0.001 of it; stuck 0.1 below)."""
    _, x, layers, stuck, stuck_value, reference = swapped
    assert layer_ari(x, stuck, layers, 1) < 0.1  # EM alone keeps the swap
    params, value, changes = dgmm_relabel.relabel(x, stuck, 1e-6)
    assert len(changes) == 1 and changes[0].startswith("layer 2 under layer-1 component")
    assert changes[0].endswith("sub-paths -> [1, 0]")
    assert layer_ari(x, params, layers, 1) > 0.95
    assert value > stuck_value + 0.05 and value > reference - 0.02
    assert value == pytest.approx(float(dgmm.log_likelihood(x, params).mean()), abs=1e-9)


def test_relabel_never_lowers_the_likelihood():
    """From layer-wise starts after a few EM steps (labellings right or wrong), the returned
    value is at least the start's and is the returned parameters' likelihood."""
    for x, start, history in settled_layerwise_starts(SIZES, FACTORS):
        params, value, _ = dgmm_relabel.relabel(x, start, 1e-6, trial_cycles=1)
        assert value >= history[-1] - 1e-9
        assert value == pytest.approx(float(dgmm.log_likelihood(x, params).mean()), abs=1e-9)


def fit(X, start, **options):
    return fit_from(start, X, SIZES, FACTORS, **options)


def test_estimator_relabels_between_search_and_release(swapped):
    """relabel=True (default) leaves the stuck labelling, relabel=False keeps it; both
    histories monotone, and the same search up to the relabelling."""
    X, x, layers, stuck, _, _ = swapped
    on, off = fit(X, stuck), fit(X, stuck, relabel=False)
    assert on.relabel and len(on.relabel_changes_) == 1 and not hasattr(off, "relabel_changes_")
    assert adjusted_rand_score(layers[:, 1], on.predict_layers(X)[:, 1]) > 0.95
    assert adjusted_rand_score(layers[:, 1], off.predict_layers(X)[:, 1]) < 0.1
    assert on.score(X) > off.score(X) + 0.05
    for est in (on, off):
        assert np.all(np.diff(est.history_) >= -1e-8) and len(est.history_) == est.n_iter_
    assert on.history_[0] == off.history_[0]
    on.set_params(relabel=False).fit(X)  # a refit without the move keeps no stale list
    assert not hasattr(on, "relabel_changes_")


def test_stream_fit_relabels_as_the_in_memory_fit(swapped):
    """The move's E-steps are the loop's sums over batches: two batches, same decisions and
    the same fit, up to the rounding of the sums (with relabel=False the differences were
    2.1e-6 on the history and 1.3e-4 on the means)."""
    X, _, _, stuck, _, _ = swapped
    in_memory = assert_stream_fit_moves_as_in_memory(
        fit, X, stuck, lambda est: est.relabel_changes_)
    assert in_memory.relabel_changes_ != []


def test_relabel_is_validated_and_unused_by_plain_em(swapped):
    X, _, _, stuck, _, _ = swapped
    assert_move_validated_and_unused_by_plain_em(fit, X, stuck, SIZES, FACTORS, "relabel",
                                                 "relabel_changes_")
