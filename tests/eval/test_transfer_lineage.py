"""Transfer across a fine-tune lineage (Kissane et al. 2024): a dictionary trained on a zoo base model's
activations, applied to a fine-tune of it, is a like-for-like test; one of a from-scratch model of
another seed is refused. The lineage reaches the dictionaries' meta through the activation reader."""

from __future__ import annotations

import pytest
import torch

from universality.errors import MatchError
from universality.eval.transfer import OTHER_RUN_NOTE, check_same_run, transfer_metrics

SITE = "blocks.1.hook_resid_post"
SAE_STEPS = 150


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny base run, a fine-tune of its last checkpoint on other text, and the same base config
    trained from scratch with another seed; with one top-k dictionary per model (same data)."""
    import models
    from universality.activations import LiveReader
    from universality.data import PackingConfig, shakespeare
    from universality.sae import sae_config
    from universality.train import RunConfig, TrainConfig, train_saes
    from universality.zoo import finetune_lm, from_dict, synthetic_pattern, train_lm, train_tokenizer
    from universality.zoo.corpus import as_subset, pack_documents

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lineage")
    docs = list(shakespeare(limit=12))
    tok = train_tokenizer([d.text for d in docs], 384, root / "tok")
    cfg = from_dict(dict(family="gpt2", d_model=32, n_layers=2, n_heads=2, context_length=32, steps=24, batch_size=8,
                         warmup_steps=4, lr=1e-2, checkpoint_steps=(0, 24), eval_contexts=8, vocab_size=384))
    base = train_lm(cfg, docs, root / "base", tokenizer=tok, progress=False)
    other = train_lm(cfg.replace(seed=1), docs, root / "other", tokenizer=tok, progress=False)
    new = [d.text for d in list(shakespeare(limit=43))[40:43]] + [" ".join([synthetic_pattern(s)] * 6) for s in range(8)]
    ft = finetune_lm(base, 24, new, root / "ft", steps=16, lr=3e-3, checkpoint_steps=(16,), progress=False)

    subset = as_subset(docs)
    adapters, saes = {}, {}
    for name, folder in (("base", base), ("ft", ft), ("other", other)):
        adapters[name] = models.load(str(folder))
        reader = LiveReader(adapters[name], subset, SITE, packing=PackingConfig(context_len=32), batch_size=128,
                            epochs=None)
        tc = TrainConfig(sae_config("topk", 32, 64, k=8), site=SITE, lr=3e-3)
        saes[name] = train_saes(reader, tc, RunConfig(steps=SAE_STEPS), progress=False)[tc.key]
    ids = pack_documents(as_subset(new).documents, tok, 32)[:8]
    return {"adapters": adapters, "saes": saes, "batch": (ids, torch.ones_like(ids)), "dirs": (base, ft, other)}


def test_the_readers_record_the_lineage_in_the_dictionaries(zoo):
    from universality.zoo import lineage_of

    base, ft, other = zoo["dirs"]
    meta = {k: s.meta for k, s in zoo["saes"].items()}
    assert meta["base"]["lineage"] == meta["ft"]["lineage"] == lineage_of(base) == lineage_of(ft)
    assert meta["other"]["lineage"] == lineage_of(other) != lineage_of(base)
    assert meta["base"]["model"] != meta["ft"]["model"]  # different folders, one lineage
    assert check_same_run(meta["base"], meta["ft"]) == ""
    with pytest.raises(MatchError, match="different lineages"):
        check_same_run(meta["other"], meta["ft"])
    # without lineage ids the old rule holds: different model names are refused
    strip = lambda m: {k: v for k, v in m.items() if k != "lineage"}  # noqa: E731
    with pytest.raises(MatchError, match="different models"):
        check_same_run(strip(meta["base"]), strip(meta["ft"]))
    assert check_same_run({"model": "m", "lineage": "x"}, {"model": "m"}) == ""


def test_base_dictionary_transfers_to_the_fine_tune_and_another_seed_is_refused(zoo):
    saes, ft = zoo["saes"], zoo["adapters"]["ft"]
    rows = {r["metric"]: r for r in transfer_metrics(ft, saes["base"], saes["ft"], SITE, *zoo["batch"])}
    assert all(r["note"] == "" for r in rows.values())
    ev, ce = rows["explained_variance"], rows["ce_loss_recovered_zero"]
    assert ev["floor"] < ev["transferred"] and ev["normalised"] > 0.5, ev
    assert ce["transferred"] > ce["floor"], ce
    assert rows["kl_sae"]["transferred"] < rows["kl_sae"]["floor"]
    with pytest.raises(MatchError, match="different lineages"):
        transfer_metrics(ft, saes["other"], saes["ft"], SITE, *zoo["batch"])
    flagged = transfer_metrics(ft, saes["other"], saes["ft"], SITE, *zoo["batch"], allow_other_runs=True)
    assert all(r["note"] == OTHER_RUN_NOTE for r in flagged)


def test_a_dictionary_on_its_own_model_equals_its_native_numbers(zoo):
    sae = zoo["saes"]["base"]
    for r in transfer_metrics(zoo["adapters"]["base"], sae, sae, SITE, *zoo["batch"]):
        assert r["transferred"] == r["native"], r
        if r["metric"] != "kl_sae" or abs(r["native"] - r["floor"]) > 1e-9:
            assert r["normalised"] == pytest.approx(1.0)
