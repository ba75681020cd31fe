import itertools

import pytest
import torch
from activation_helpers import SITES

from universality.activations import LiveReader, StoreReader
from universality.data import PackingConfig
from universality.errors import ConfigError, UnknownSiteError


def _take(reader, n):
    return list(itertools.islice(iter(reader), n))


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("shuffle_buffer", [0, 300])
def test_restored_reader_continues_on_exactly_the_same_rows(small_store, shuffle_buffer):
    make = lambda: small_store.iter_batches(SITES, batch_size=64, shuffle_buffer=shuffle_buffer, seed=5, epochs=2)
    full = list(make())
    first = make()
    head = _take(first, 30)  # crosses shard, group and (for 0) epoch boundaries
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = list(resumed)
    _same(head + tail, full)
    assert sum(next(iter(b.values())).shape[0] for b in full) == 2 * small_store.n_rows


def test_each_epoch_reads_every_row_once_in_a_seeded_order(small_store):
    def ids(reader):
        out = [b["context_index"] * 1000 + b["position"] for b in reader]
        return torch.cat(out)

    a = ids(small_store.iter_batches(SITES[0], batch_size=50, shuffle_buffer=500, seed=1, fields=("context_index", "position")))
    b = ids(small_store.iter_batches(SITES[0], batch_size=50, shuffle_buffer=500, seed=1, fields=("context_index", "position")))
    c = ids(small_store.iter_batches(SITES[0], batch_size=50, shuffle_buffer=500, seed=2, fields=("context_index", "position")))
    plain = ids(small_store.iter_batches(SITES[0], batch_size=50, fields=("context_index", "position")))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert torch.equal(torch.sort(a).values, torch.sort(plain).values)
    assert torch.equal(plain, torch.sort(plain).values)  # no shuffle: store order
    assert len(plain) == small_store.n_rows


def test_rows_match_store_rows(small_store):
    rows = small_store.rows(sites=SITES)
    batches = list(small_store.iter_batches(SITES, batch_size=333))
    for s in SITES:
        assert torch.equal(torch.cat([b[s] for b in batches]), rows[s])


def test_resident_memory_is_bounded_by_the_buffer(small_store):
    buffer, batch = 256, 32
    reader = small_store.iter_batches(SITES, batch_size=batch, shuffle_buffer=buffer, seed=0)
    n = sum(b[SITES[0]].shape[0] for b in reader)
    assert n == small_store.n_rows > 10 * buffer
    assert 0 < reader.resident_rows <= buffer + batch


def test_reader_errors(small_store):
    with pytest.raises(UnknownSiteError):
        small_store.iter_batches("blocks.1.hook_mlp_out")
    with pytest.raises(ConfigError):
        small_store.iter_batches(batch_size=0)
    state = small_store.iter_batches(batch_size=8, seed=1).state_dict()
    with pytest.raises(ConfigError, match="same arguments"):
        small_store.iter_batches(batch_size=8, seed=2).load_state_dict(state)


def test_batches_move_to_device_and_dtype(small_store, device):
    batch = next(iter(small_store.iter_batches(SITES[0], batch_size=16, device=device, dtype=torch.float16)))
    assert batch[SITES[0]].device.type == device and batch[SITES[0]].dtype == torch.float16
    assert isinstance(StoreReader, type)


def test_live_reader_streams_the_same_rows_as_the_store(tiny_gpt2, poems, small_store):
    pack = PackingConfig(context_len=32)
    live = LiveReader(tiny_gpt2, poems, SITES, packing=pack, batch_size=100, forward_batch=4)
    stored = list(small_store.iter_batches(SITES, batch_size=100))
    got = list(live)
    assert len(got) == len(stored)
    for x, y in zip(got, stored):
        for s in SITES:
            torch.testing.assert_close(x[s], y[s], rtol=1e-5, atol=1e-5)


def test_live_reader_resumes_exactly_with_a_shuffle_buffer(tiny_gpt2, poems):
    make = lambda: LiveReader(tiny_gpt2, poems, SITES[0], packing=PackingConfig(context_len=32),
                              batch_size=64, shuffle_buffer=640, seed=3, forward_batch=8)
    reader = make()
    head = _take(reader, 12)
    state = reader.state_dict()
    more = _take(reader, 4)
    resumed = make()
    resumed.load_state_dict(state)
    _same(_take(resumed, 4), more)
    assert head and reader.resident_rows <= 640 + 64
