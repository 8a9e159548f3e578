"""The one Objective interface: its batching rule, positives and rank shards, which every recipe now shares."""
import pytest
import torch

from clipforge.losses.objective import Objective, shuffled_indices
from clipforge.train.distributed import World


@pytest.mark.parametrize("n,bs,drop", [(10, 3, False), (10, 3, True), (9, 3, True), (7, 0, False), (7, 7, True),
                                       (7, 50, False)])
def test_every_item_once_per_epoch_in_batches_of_the_size(n, bs, drop):
    batches = shuffled_indices(n, bs, seed=1, epoch=0, drop_last=drop)
    seen = torch.cat(batches)
    full = not bs or bs >= n
    if full:
        assert len(batches) == 1 and torch.equal(batches[0], torch.arange(n))      # one batch, in order
    else:
        assert all(len(b) == bs for b in batches[:-1])
        assert len(seen) == (n - n % bs if drop else n) and len(set(seen.tolist())) == len(seen)
        assert (len(batches[-1]) == bs) if drop else len(seen) == n


def test_the_order_is_seeded_by_seed_and_epoch():
    a = torch.cat(shuffled_indices(20, 4, seed=3, epoch=0))
    assert torch.equal(a, torch.cat(shuffled_indices(20, 4, seed=3, epoch=0)))
    assert not torch.equal(a, torch.cat(shuffled_indices(20, 4, seed=3, epoch=1)))
    assert not torch.equal(a, torch.cat(shuffled_indices(20, 4, seed=4, epoch=0)))


class _Count(Objective):
    def forward(self, idx):
        return idx.float().sum()


@pytest.mark.parametrize("n,bs,drop", [(10, 3, False), (10, 3, True), (10, 0, False), (10, 4, True)])
def test_steps_per_epoch_counts_the_batches(n, bs, drop):
    obj = _Count(torch.nn.Linear(1, 1), n, bs, seed=0)
    obj.drop_last = drop
    assert obj.steps_per_epoch == len(list(obj.batches(0)))


def test_a_rank_takes_its_slice_of_each_global_batch_and_batches_divide_by_the_world():
    ranks = [_Count(torch.nn.Linear(1, 1), 11, 5, seed=2, world=World(r, 2)) for r in range(2)]
    assert ranks[0].batch_size == 4                                   # 5 rounded down to a multiple of 2
    single = _Count(torch.nn.Linear(1, 1), 11, 4, seed=2)
    single.drop_last = True
    assert ranks[0].steps_per_epoch == 2 == len(list(ranks[1].batches(0)))   # the short last batch is dropped
    for g, a, b in zip(single.batches(0), ranks[0].batches(0), ranks[1].batches(0)):
        assert torch.equal(torch.cat([a, b]), g) and len(a) == len(b) == 2


def test_positives_mark_shared_owners_only():
    owners = torch.tensor([0, 1, 0, 2])
    pos = Objective.positives(owners)
    assert torch.equal(pos, torch.tensor([[1., 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]))
    assert torch.equal(Objective.positives(owners, torch.tensor([2, 0])), torch.tensor([[0., 1], [0, 0], [0, 1], [1, 0]]))
