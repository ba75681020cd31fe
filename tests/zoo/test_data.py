"""Batches, packing, optimizer-state round trip and the planted corpus (no model training here)."""

from __future__ import annotations

import pytest
import torch

from universality.errors import DataError
from universality.zoo import InjectSpec, planted_corpus, synthetic_pattern
from universality.zoo.batches import BatchSchedule
from universality.zoo.corpus import as_subset, pack_documents, pack_texts, split_eval_rows
from universality.zoo.optim_state import load_optimizer, make_optimizer, save_optimizer


def test_batches_visit_every_row_once_per_epoch_and_are_pure_functions_of_the_step():
    rows = torch.arange(10 * 3).view(10, 3)
    sched = BatchSchedule(rows, batch_size=5, seed=7)
    epoch0 = torch.cat([sched.indices(0), sched.indices(1)])
    assert sorted(epoch0.tolist()) == list(range(10))
    again = BatchSchedule(rows, batch_size=5, seed=7)
    assert torch.equal(again.indices(3), sched.indices(3))  # no iterator state: any step, any order
    assert not torch.equal(BatchSchedule(rows, 5, seed=8).indices(0), sched.indices(0))
    odd = BatchSchedule(rows, batch_size=4, seed=0)  # batches straddle epoch boundaries
    flat = torch.cat([odd.indices(t) for t in range(5)])
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))


def test_injected_rows_only_after_the_step():
    rows = torch.zeros(6, 4, dtype=torch.int64)
    inject_rows = torch.ones(3, 4, dtype=torch.int64) * torch.arange(1, 4).view(3, 1)
    sched = BatchSchedule(rows, 4, 0, InjectSpec(after_step=2, texts=("x",), fraction=0.5), inject_rows)
    assert sched.batch(0).sum() == 0 and sched.batch(1).sum() == 0
    b2, b3 = sched.batch(2), sched.batch(3)
    assert b2[:2].sum() == 0 and b2[2:, 0].tolist() == [1, 2]
    assert b3[2:, 0].tolist() == [3, 1]  # cycles through the injected rows


def test_packing_uses_the_data_package_layout(corpus, tokenizer):
    rows = pack_documents(corpus[:2], tokenizer, 32)
    assert rows.shape[1] == 32 and rows.dtype == torch.int64
    assert (rows[:, 0] == tokenizer.eos_token_id).all()  # every row starts with <|endoftext|>
    train, held = split_eval_rows(rows, 5)
    assert held.shape[0] == 5 and train.shape[0] == rows.shape[0] - 5
    together = {tuple(r) for r in torch.cat([train, held]).tolist()}
    assert together == {tuple(r) for r in rows.tolist()}
    short = pack_texts(["hi"], tokenizer, 32)  # a short text is repeated to fill one row
    assert short.shape == (1, 32)
    with pytest.raises(DataError):
        pack_documents(as_subset(["a"]).documents, tokenizer, 32)


def test_as_subset_records_name_and_hash(corpus):
    sub = as_subset([d.text for d in corpus[:3]])
    assert sub.source_name == "texts" and len(sub) == 3
    assert as_subset([d.text for d in corpus[:3]]).hash == sub.hash
    assert as_subset([d.text for d in corpus[:2]]).hash != sub.hash
    with pytest.raises(DataError):
        as_subset("one string")
    with pytest.raises(DataError):
        as_subset([])


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = make_optimizer(model, 0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # matrices decay, vectors don't
    for group in opt.param_groups:
        group["lr"] = 1e-2
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    save_optimizer(opt, model, tmp_path / "opt.safetensors")
    fresh = make_optimizer(model, 0.1)
    load_optimizer(fresh, model, tmp_path / "opt.safetensors")
    for p in model.parameters():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh.state[p][key], opt.state[p][key])


def test_planted_corpus_puts_the_pattern_only_in_d_minus_d_prime(corpus):
    base = [d.text for d in corpus[:6]]
    pc = planted_corpus(base, n_planted=4, repeats=2, seed=1)
    assert pc.pattern == synthetic_pattern(1) and pc.pattern != synthetic_pattern(2)
    full_texts = [d.text for d in pc.full.documents]
    sub_texts = [d.text for d in pc.subset.documents]
    assert len(full_texts) == 10 and sum(pc.pattern in t for t in full_texts) == 4
    assert sub_texts == base and not any(pc.pattern in t for t in sub_texts)
    assert set(pc.subset.ids) < set(pc.full.ids) and pc.full.hash != pc.subset.hash
    assert pc.probe == (pc.pattern,) and all(pc.pattern not in t for t in base)
