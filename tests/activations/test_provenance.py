"""Readers name what they stream (``provenance()``), and the trainer records it without ``meta=``."""

from __future__ import annotations

import pytest

from activation_helpers import SITES

from universality.activations import DevicePrefetcher, LiveReader
from universality.data import PackingConfig
from universality.sae import sae_config
from universality.train import RunConfig, TrainConfig, train_saes


def test_store_and_live_readers_report_the_same_provenance(small_store, tiny_gpt2, poems):
    store = small_store.iter_batches(SITES, batch_size=64).provenance()
    assert store["model"] == tiny_gpt2.name and store["revision"] == tiny_gpt2.revision
    assert store["subset_hash"] == poems.hash and store["dataset"] == poems.source_name
    assert "store_key" not in store  # it hashes the model's folder: identical runs would differ
    live = LiveReader(tiny_gpt2, poems, SITES, packing=PackingConfig(context_len=32), batch_size=64).provenance()
    assert {k: live[k] for k in ("model", "revision", "dataset", "subset_hash")} == \
        {k: store[k] for k in ("model", "revision", "dataset", "subset_hash")}
    assert DevicePrefetcher(small_store.iter_batches(SITES, batch_size=64)).provenance() == store


def test_trainer_records_the_store_provenance_and_hand_meta_wins(small_store, poems):
    site = SITES[0]
    cfg = TrainConfig(sae_config("topk", small_store.width(site), 16, k=2), site=site, lr=1e-3)
    reader = small_store.iter_batches([site], batch_size=64)
    sae = train_saes(reader, cfg, RunConfig(steps=2), meta={"dataset": "by hand"}, progress=False)[cfg.key]
    prov = reader.provenance()
    assert sae.meta["model"] == prov["model"] and sae.meta["subset_hash"] == poems.hash
    assert sae.meta["dataset"] == "by hand" and sae.meta["site"] == site
    identity = sae.meta["init"]["identity"]
    assert identity["model"] == prov["model"] and identity["dataset"] == "by hand" and "data" not in identity


def test_a_source_that_runs_out_warns_and_says_so(small_store):
    site = SITES[0]
    cfg = TrainConfig(sae_config("topk", small_store.width(site), 16, k=2), site=site, lr=1e-3)
    reader = small_store.iter_batches([site], batch_size=1024, drop_last=True)
    n = len(reader)
    with pytest.warns(UserWarning, match=rf"ran out after {n} of 50 steps .*RunConfig\(steps={n}\)"):
        sae = train_saes(reader, cfg, RunConfig(steps=50), progress=False)[cfg.key]
    assert sae.meta["source_exhausted"] is True
    assert sae.meta["trained_steps"] == n and sae.meta["steps_requested"] == 50
