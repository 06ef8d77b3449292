"""The DGMM's frame move (``reframe=True``): a component's frame of the scores moved away
from the truth's is frozen under EM at a small noise floor, :func:`dgmm_moves.reframe` brings
it back, never lowers the likelihood, and the estimator's argument (validation, off for
plain EM, equal on a stream)."""

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
from ppl_mixtures.inference.em import dgmm_moves, dgmm_relabel
from ppl_mixtures.models import dgmm

SIZES, FACTORS = (2, 2), (4, 2)
FLOOR = 1e-8


@pytest.fixture(scope="module")
def frozen():
    """``make_dgmm(600, 9, (2, 2), (4, 2))`` (seed 0), and the truth with first-layer
    component 1's frame of the scores moved by ``z' = A z + b`` (A = I + 0.5 N(0, 1),
    b ~ N(0, 1), fixed seed), then 20 SQUAREM cycles at the floor 1e-8 (measured: 7.85 nats
    per point against 10.45 from the truth; EM climbs back slowly, 9.00 after 40 more
    cycles)."""
    X, layers, _, params = make_dgmm(600, 9, SIZES, FACTORS, random_state=0, standardize=True)
    x = torch.as_tensor(X)
    truth = dgmm.DGMMParams.from_numpy(params)
    generator = torch.Generator().manual_seed(0)
    a = torch.eye(4, dtype=torch.float64) + 0.5 * torch.randn(4, 4, generator=generator,
                                                              dtype=torch.float64)
    b = torch.randn(4, generator=generator, dtype=torch.float64)
    moved = dgmm_relabel._moved_frame(truth, 1, 1, a, b)
    stuck, history = em_dgmm.accelerate(x, moved, 20, FLOOR)
    _, reference = em_dgmm.accelerate(x, truth, 20, FLOOR)
    return X, x, stuck, history[-1], reference[-1]


def test_frame_groups_are_every_parent_below_the_top():
    assert dgmm_moves.frame_groups((3, 3, 2)) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1),
                                                  (2, 2)]
    assert dgmm_moves.frame_groups((4,)) == []


def test_reframe_climbs_faster_than_em(frozen):
    """From the moved frame, the move (about 6 trials of 2 cycles) gets further than 40 more
    SQUAREM cycles (measured: 9.57 against 9.00 nats per point)."""
    _, x, stuck, stuck_value, reference = frozen
    assert stuck_value < reference - 2.0
    _, more = em_dgmm.accelerate(x, stuck, 40, FLOOR)
    params, start, value, moves = dgmm_moves.reframe(x, stuck, FLOOR)
    assert start == pytest.approx(stuck_value, abs=1e-6) and moves >= 1
    assert value > more[-1] + 0.25
    assert value == pytest.approx(float(dgmm.log_likelihood(x, params).mean()), abs=1e-9)


def test_reframe_never_lowers_the_likelihood():
    """From layer-wise starts after a few EM steps, the returned value is at least the
    start's; ``rounds=0`` returns the fit unchanged."""
    for x, start, history in settled_layerwise_starts(SIZES, FACTORS):
        params, begin, value, _ = dgmm_moves.reframe(x, start, 1e-6, rounds=2,
                                                     trial_cycles=1)
        assert begin == pytest.approx(history[-1], abs=1e-9) and value >= begin
        assert value == pytest.approx(float(dgmm.log_likelihood(x, params).mean()), abs=1e-9)
    same, begin, value, moves = dgmm_moves.reframe(x, start, 1e-6, rounds=0)
    assert same is start and value == begin and moves == 0


def fit(X, start, **options):
    return fit_from(start, X, SIZES, FACTORS, **options)


@pytest.mark.slow  # 5-25 s (two full default fits; idle to loaded)
def test_estimator_reframes_after_the_release(frozen):
    """reframe=True (default) runs the move after the release and records it; the same
    search up to it, never lower than reframe=False, both histories monotone."""
    X, _, stuck, _, _ = frozen
    on, off = fit(X, stuck), fit(X, stuck, reframe=False)
    assert on.reframe and set(on.reframe_) == {"before", "after", "moves", "continued", "seconds"}
    assert not hasattr(off, "reframe_")
    assert on.reframe_["after"] >= on.reframe_["before"]
    assert on.score(X) >= off.score(X) - 1e-9
    for est in (on, off):
        assert np.all(np.diff(est.history_) >= -1e-8) and len(est.history_) == est.n_iter_
    assert on.history_[0] == off.history_[0]
    on.set_params(reframe=False).fit(X)  # a refit without the move keeps no stale record
    assert not hasattr(on, "reframe_")


def test_stream_fit_reframes_as_the_in_memory_fit():
    """The move's E-steps are the loop's sums over batches: on the relabelling tests'
    swapped start (a converged default fit), two batches take the same decisions and give
    the same fit up to the rounding of the sums."""
    X, _, _, params = make_dgmm(600, 9, SIZES, FACTORS, random_state=0, standardize=True)
    x = torch.as_tensor(X)
    truth = dgmm.DGMMParams.from_numpy(params)
    start = dgmm_relabel.relabelled(em_dgmm.e_step(x, truth), 1, 1, (1, 0))
    stuck, _ = em_dgmm.accelerate(x, start, 20, 1e-6)
    assert_stream_fit_moves_as_in_memory(fit, X, stuck, lambda est: est.reframe_["moves"])


def test_reframe_is_validated_and_unused_by_plain_em(frozen):
    X, _, stuck, _, _ = frozen
    assert_move_validated_and_unused_by_plain_em(fit, X, stuck, SIZES, FACTORS, "reframe",
                                                 "reframe_")
