"""DevicePrefetcher: same batches as the wrapped reader, exact resume, clean errors; a trainer fed through it."""

from __future__ import annotations

import pytest
import torch
from activation_helpers import SITES

from universality import synthetic as syn
from universality.activations.readers import DevicePrefetcher
from universality.errors import ConfigError, DataError
from universality.sae import sae_config
from universality.train import RunConfig, TrainConfig, Trainer


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shuffle_buffer", [0, 700])
def test_prefetcher_yields_the_readers_batches_and_resumes_exactly(small_store, shuffle_buffer, device):
    make = lambda: small_store.iter_batches(SITES, batch_size=96, shuffle_buffer=shuffle_buffer, seed=3, epochs=2)
    plain = list(make())
    wrapped = DevicePrefetcher(make(), device=device, depth=3)
    got = list(wrapped)
    assert len(got) == len(plain) > 10
    assert all(_equal({k: v.cpu() for k, v in g.items()}, p) for g, p in zip(got, plain))
    assert all(v.device.type == torch.device(device).type for g in got for v in g.values())

    # stop after 7 batches while the thread has read ahead; the state is that of batch 7, not beyond
    first = DevicePrefetcher(make(), device=device, depth=4)
    it = iter(first)
    head = [next(it) for _ in range(7)]
    state = first.state_dict()
    assert state["rows_yielded"] == 7 * 96
    second = DevicePrefetcher(make(), device=device, depth=2)
    second.load_state_dict(state)
    tail = list(second)
    assert len(head) + len(tail) == len(plain)
    for g, p in zip(head + tail, plain):
        assert _equal({k: v.cpu() for k, v in g.items()}, p)

    # iterating the same wrapper again continues after the last yielded batch (read-ahead is rewound)
    again = DevicePrefetcher(make(), device=device, depth=4)
    it = iter(again)
    for _ in range(3):
        next(it)
    del it
    rest = list(again)
    assert _equal({k: v.cpu() for k, v in rest[0].items()}, plain[3]) and len(rest) == len(plain) - 3


def test_prefetcher_on_plain_tensors_and_dtype():
    batches = [torch.randn(5, 4, dtype=torch.float64) for _ in range(6)]
    out = list(DevicePrefetcher(batches, dtype=torch.float32))
    assert [b.dtype for b in out] == [torch.float32] * 6
    assert all(torch.equal(o, b.float()) for o, b in zip(out, batches))
    with pytest.raises(ConfigError, match="state_dict"):
        DevicePrefetcher(batches).state_dict()


def test_prefetcher_errors_reach_the_consumer():
    def broken():
        yield torch.zeros(2, 2)
        raise DataError("the source broke", "fix it")

    it = iter(DevicePrefetcher(broken()))
    assert torch.equal(next(it), torch.zeros(2, 2))
    with pytest.raises(DataError, match="the source broke"):
        next(it)
    with pytest.raises(ConfigError, match="depth"):
        DevicePrefetcher([], depth=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            DevicePrefetcher([], device="cuda")


def test_trainer_resumes_through_the_prefetcher(tmp_path):
    probs = syn.feature_probabilities(24, 3.0)
    make_src = lambda n=None: DevicePrefetcher(syn.PlantedSource(syn.planted_dictionary(24, 8), probs, 64, seed=2, n_batches=n), depth=3)
    cfg = [TrainConfig(sae_config("topk", 8, 16, k=2), lr=3e-3)]
    full = Trainer(cfg, RunConfig(steps=12))
    full.fit(make_src(), progress=False)
    run = RunConfig(steps=12, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3)
    Trainer(cfg, run).fit(make_src(n=7), progress=False)  # the stream ends at step 7
    resumed = Trainer(cfg, run)
    resumed.fit(make_src(), progress=False)
    key = full.keys[0]
    for name, value in full.saes[key].state_dict().items():
        assert torch.equal(value, resumed.saes[key].state_dict()[name]), name
