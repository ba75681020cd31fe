"""Aligned multi-source rows: two tiny models (GPT-2, GPT-NeoX, one tokenizer) harvested on the same
texts give rows that agree token by token, through stores (different shard sizes) and live; a crosscoder
trains on them; other texts or another tokenizer are refused; a resumed read continues exactly."""

from __future__ import annotations

import pytest
import torch
from activation_helpers import assert_same_batches, read_batches

from universality.activations import aligned_live, aligned_stores, harvest
from universality.crosscoder.source import JointSource
from universality.data import PackingConfig
from universality.errors import DataError
from universality.sae.crosscoder_config import crosscoder_config
from universality.train import RunConfig, TrainConfig, train_saes

SITE = "blocks.1.hook_resid_post"
PACK = PackingConfig(context_len=32)
ROWS = 600
FIELDS = ("token_ids", "context_index", "position")


@pytest.fixture(scope="module")
def tiny_neox(tmp_path_factory):
    import models
    from models.testing import make_tiny_model

    return models.load(str(make_tiny_model("gpt_neox", tmp_path_factory.mktemp("neox"), seed=3)))


@pytest.fixture(scope="module")
def texts(poems):
    return [d.text for d in list(poems)[:8]]


def _harvest(adapter, texts, out, **kw):
    kw = {"packing": PACK, "batch_size": 4, "shard_rows": 100, "max_tokens": ROWS, "progress": False} | kw
    return harvest(adapter, texts, [SITE], out, **kw)


@pytest.fixture(scope="module")
def stores(tiny_gpt2, tiny_neox, texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    # different shard sizes: the aligned order is over global rows, not shards
    return _harvest(tiny_gpt2, texts, root / "gpt2"), _harvest(tiny_neox, texts, root / "neox", shard_rows=300)


def _row_index(store):
    rows = store.rows(fields=("context_index", "position"), sites=[SITE])
    index = {(int(c), int(p)): r for r, (c, p) in enumerate(zip(rows["context_index"], rows["position"]))}
    return index, rows[SITE]


def test_aligned_store_rows_are_the_same_tokens_in_one_shuffled_order(stores):
    a, b = stores
    assert a.n_rows == b.n_rows == ROWS and len(a.shards) != len(b.shards)
    reader = aligned_stores([a, b], [SITE, SITE], batch_size=64, shuffle_buffer=200, seed=3, fields=FIELDS, piece_rows=100)
    (index_a, acts_a), (index_b, acts_b) = _row_index(a), _row_index(b)
    seen, order = set(), []
    for batch in reader:
        for f in FIELDS:
            assert torch.equal(batch[f"0:{f}"], batch[f"1:{f}"]), f
        keys = list(zip(batch["0:context_index"].tolist(), batch["0:position"].tolist()))
        order += keys
        seen.update(keys)
        assert torch.equal(batch[f"0:{SITE}"], acts_a[[index_a[k] for k in keys]])
        assert torch.equal(batch[f"1:{SITE}"], acts_b[[index_b[k] for k in keys]])
    assert len(order) == len(seen) == ROWS  # every row once
    assert order != sorted(order, key=lambda k: index_a[k])  # and shuffled
    prov = JointSource.aligned(reader).provenance()["sources"]
    assert [s["model"] for s in prov] == [a.manifest["model"], b.manifest["model"]] and prov[1]["site"] == SITE


def test_a_crosscoder_trains_on_aligned_stores(stores, tmp_path):
    reader = aligned_stores(list(stores), [SITE, SITE], batch_size=64, shuffle_buffer=200, seed=0, epochs=None)
    cfg = TrainConfig(crosscoder_config((64, 64), 32, k=4), site="joint", lr=3e-3)
    cc = train_saes(JointSource.aligned(reader), [cfg], RunConfig(steps=6), progress=False)[cfg.key]
    assert cc.meta["trained_steps"] == 6 and not cc.meta["source_exhausted"]
    assert [s["model"] for s in cc.meta["sources"]] == [s.manifest["model"] for s in stores]
    assert len(cc.meta["metrics"]["explained_variance_per_source"]) == 2


def test_stores_of_other_texts_or_packing_are_refused(tiny_gpt2, stores, texts, tmp_path):
    other = _harvest(tiny_gpt2, texts[::-1], tmp_path / "reversed")  # same row count, other tokens
    assert other.n_rows == ROWS
    with pytest.raises(DataError, match=r"aligned sources disagree on their first rows .*: row \d+ is token"):
        aligned_stores([stores[0], other], [SITE, SITE], batch_size=64)
    short = _harvest(tiny_gpt2, texts, tmp_path / "short", packing=PackingConfig(context_len=16))
    with pytest.raises(DataError, match="aligned stores disagree on packing"):
        aligned_stores([stores[0], short], [SITE, SITE], batch_size=64)
    fewer = _harvest(tiny_gpt2, texts, tmp_path / "fewer", max_tokens=ROWS - 100)
    with pytest.raises(DataError, match="different row counts: 600 .* 500"):
        aligned_stores([stores[0], fewer], [SITE, SITE], batch_size=64)


def test_resume_mid_way_gives_the_uninterruptedread_batches(stores):
    def make():
        return JointSource.aligned(aligned_stores(list(stores), [SITE, SITE], batch_size=48, shuffle_buffer=200, seed=5, epochs=2))

    full = read_batches(make())
    first = make()
    it = iter(first)
    assert_same_batches(read_batches(it, 9), full[:9])  # crosses a group boundary and, later, the epoch
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    assert_same_batches(read_batches(second), full[9:])


def test_live_aligned_rows_equal_the_aligned_stores_and_resume(tiny_gpt2, tiny_neox, texts, stores):
    def live(**kw):
        return aligned_live([tiny_gpt2, tiny_neox], texts, [SITE, SITE], batch_size=64, packing=PACK, forward_batch=4, **kw)

    from_stores = read_batches(aligned_stores(list(stores), [SITE, SITE], batch_size=64, fields=("token_ids",)), 5)
    from_live = read_batches(live(fields=("token_ids",)), 5)
    for s, x in zip(from_stores, from_live):
        assert torch.equal(s["0:token_ids"], x["0:token_ids"]) and torch.equal(x["0:token_ids"], x["1:token_ids"])
        for name in (f"0:{SITE}", f"1:{SITE}"):
            torch.testing.assert_close(s[name], x[name], rtol=1e-5, atol=1e-5)
    shuffled = read_batches(live(shuffle_buffer=96, seed=2), 6)
    reader = live(shuffle_buffer=96, seed=2)
    read_batches(reader, 4)
    resumed = live(shuffle_buffer=96, seed=2)
    resumed.load_state_dict(reader.state_dict())
    assert_same_batches(read_batches(resumed, 2), shuffled[4:6])


def test_live_sources_with_other_tokenizers_are_refused(tiny_gpt2, texts, tmp_path):
    import models
    from models.testing import make_tiny_model

    other = models.load(str(make_tiny_model("gpt2", tmp_path / "v300", vocab_size=300)))
    reader = aligned_live([tiny_gpt2, other], texts, [SITE, SITE], batch_size=64, packing=PACK)
    with pytest.raises(DataError, match="aligned sources disagree on the packed contexts of group 0"):
        next(iter(reader))
