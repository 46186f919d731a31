import itertools

import pytest
import torch

from unimodal.utils.distributed import DistInfo
from unimodal.train.loop import ResumableBatchSampler, infinite_loader


class Indices(torch.utils.data.Dataset):
    def __init__(self, n, seeded=False):
        self.n, self.accepts_sample_seed = n, seeded

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, seed = key
            return {"index": i, "noise": torch.rand((), generator=torch.Generator().manual_seed(seed))}
        return {"index": key}


def take(loader, k):
    return [b["index"].tolist() for b in itertools.islice(iter(loader), k)]


def test_order_is_deterministic_and_each_epoch_is_a_permutation():
    a = take(infinite_loader(Indices(10), 5, seed=3), 6)
    assert a == take(infinite_loader(Indices(10), 5, seed=3), 6)
    assert a != take(infinite_loader(Indices(10), 5, seed=4), 6)
    flat = sum(a, [])
    for e in range(3):
        assert sorted(flat[10 * e:10 * e + 10]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled per epoch


def test_resume_at_a_data_position_gives_the_same_stream():
    full = take(infinite_loader(Indices(7), 3, seed=0), 8)  # batches straddle epoch boundaries
    loader = infinite_loader(Indices(7), 3, seed=0)
    first = take(loader, 3)
    assert loader.position == 3
    resumed = infinite_loader(Indices(7), 3, seed=0, start_position=loader.position)
    assert first + take(resumed, 5) == full
    assert resumed.position == 8
    assert take(loader, 2) == full[3:5]  # iterating again continues, it does not restart


def test_ranks_get_disjoint_shards_of_equal_length():
    n, world = 11, 3
    shards = [ResumableBatchSampler(n, 1, seed=5, rank=r, world_size=world).epoch_shard(0) for r in range(world)]
    assert all(len(s) == 4 for s in shards)
    union = sum(shards, [])
    assert sorted(set(union)) == list(range(n)) and len(union) == 12  # one index repeated as padding
    loaders = [infinite_loader(Indices(n), 2, seed=5, dist=DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert take(loaders[0], 2) == [shards[0][:2], shards[0][2:4]]


def test_sample_seeds_replay_augmentation_randomness():
    ds = Indices(6, seeded=True)
    full = [b["noise"].tolist() for b in itertools.islice(iter(infinite_loader(ds, 2, seed=1)), 5)]
    resumed = [b["noise"].tolist() for b in itertools.islice(iter(infinite_loader(ds, 2, seed=1, start_position=2)), 3)]
    assert resumed == full[2:]
    assert len({round(v, 6) for v in sum(full, [])}) > 6  # a new epoch draws new augmentations


def test_workers_do_not_change_the_order():
    assert take(infinite_loader(Indices(9), 4, seed=2, num_workers=2), 5) == take(infinite_loader(Indices(9), 4, seed=2), 5)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ResumableBatchSampler(0, 1, seed=0)
    with pytest.raises(ValueError):
        ResumableBatchSampler(5, 1, seed=0, rank=2, world_size=2)


def test_loader_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    take(infinite_loader(Indices(5), 2, seed=0), 3)
    assert torch.equal(torch.rand(2), expected)
