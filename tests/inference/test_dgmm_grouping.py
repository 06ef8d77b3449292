"""The DGMM start's first-layer grouping when the data's mixture is not balanced over the tree.

A mixture with prod G_l components fitted to DGMM data need not give every first-layer
component the same number of clusters: two paths can share one cluster and one path can take
two (seen on draws of the section 3.1 setting: group sizes 4 to 8 where the tree has 6).
"""

import itertools

import torch
from dgmm_helpers import random_params

from ppl_mixtures.inference.dgmm_start import (
    _balance_clusters,
    _move_components,
    group_components,
)
from ppl_mixtures.models import dgmm


def _unbalanced_path_moments():
    """Exact path moments of a (3, 2, 2) DGMM with one path of the first group dropped and
    one path of the second duplicated (a path the data's mixture split in two): first-layer
    groups of 3, 5 and 4 clusters."""
    sizes, factors = (3, 2, 2), (5, 3, 1)
    params = random_params(sizes, factors, 8, seed=4)
    _, means, covs = dgmm.path_moments(params)
    first = dgmm.layer_labels(torch.arange(12), sizes)[:, 0]
    keep = [p for p in range(12) if p != 0] + [4]  # path 0 (group 0) out, path 4 (group 1) twice
    order = torch.as_tensor(keep)[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    return means[order], covs[order], first[order]


def test_groups_may_differ_in_size_within_the_slack():
    means, covs, first = _unbalanced_path_moments()
    truth = sorted(sorted(torch.nonzero(first == g).flatten().tolist()) for g in range(3))
    assert sorted(len(group) for group in truth) == [3, 4, 5]
    found = group_components(means, covs, 3, 5, torch.Generator().manual_seed(1), slack=1)
    assert sorted(found) == truth
    balanced = group_components(means, covs, 3, 5, torch.Generator().manual_seed(1))
    assert [len(group) for group in balanced] == [4, 4, 4]  # slack 0: the old partition


def test_moves_and_swaps_lower_a_cost_and_keep_the_sizes_in_bounds():
    """A cost counting the members outside their true group: the local search reaches zero
    from a partition that needs a move and a two-for-two swap, and never leaves the bounds."""
    items = [*range(5), *range(10, 17), *range(20, 26)]  # true groups: the tens digit

    def cost(group):
        tens = [c // 10 for c in group]
        return float(len(group) - max(tens.count(t) for t in set(tens)))

    start = [[0, 1, 2, 10, 11, 20], [12, 13, 14, 15, 3, 4], [16, 21, 22, 23, 24, 25]]
    assert sorted(itertools.chain(*start)) == sorted(items)
    found = _move_components(start, cost, 4, 8)
    assert sum(cost(group) for group in found) == 0.0
    assert all(4 <= len(group) <= 8 for group in found)
    assert sorted(found) == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14, 15, 16],
                             [20, 21, 22, 23, 24, 25]]


def test_balance_clusters_merges_and_splits_to_equal_groups_keeping_every_row():
    """Groups of 3, 5 and 4 clusters over 3 x 4 columns: the group of 5 merges its two
    closest clusters (here the duplicated one's halves), the group of 3 splits one; every
    row's total responsibility is kept, and the groups index 4 columns each."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 3, generator=generator, dtype=torch.float64) * 10
    x = (centres[:, None, :] + torch.randn(12, 50, 3, generator=generator,
                                          dtype=torch.float64)).reshape(-1, 3)
    hard = torch.arange(12).repeat_interleave(50)
    resp = torch.nn.functional.one_hot(hard, 12).double()
    # cluster 11 split in two halves (a path the mixture cut in two), cluster 0 merged into 1
    halves = torch.zeros(600, 2, dtype=torch.float64)
    halves[hard == 11, 0] = 1.0
    halves[(hard == 11).nonzero().flatten()[25:], 0] = 0.0
    halves[(hard == 11).nonzero().flatten()[25:], 1] = 1.0
    resp = torch.cat([resp[:, :11], halves], 1)  # 13 columns
    resp[:, 1] += resp[:, 0]
    resp = resp[:, 1:]  # 12 columns: 1..10, 11a, 11b
    groups = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11]]  # sizes 3, 4, 5
    new, new_groups = _balance_clusters(x, resp, groups, 1e-6)
    assert new.shape == (600, 12)
    assert new_groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    torch.testing.assert_close(new.sum(1), resp.sum(1))
    # the last group merged 11a and 11b back: one of its columns is cluster 11 whole
    whole = (hard == 11).double()
    assert any(torch.equal(new[:, c], whole) for c in range(8, 12))
