"""Transfer (splice) tests on known answers: a copy of the native dictionary transfers perfectly, a
dictionary that keeps half the directions lands between floor and native, and dictionaries of other
training runs are refused (or reported with a warning)."""

from __future__ import annotations

import pytest
import torch

from tests.eval.test_downstream import identity_sae
from universality.errors import MatchError
from universality.eval.transfer import OTHER_RUN_NOTE, check_same_run, random_like, transfer_metrics, transfer_series

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def batch(adapter):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, adapter.model.config.vocab_size, (3, 12), generator=g)
    return ids, torch.ones_like(ids)


def _dict(d: int, revision: str, model: str = "run-1", keep: int | None = None):
    sae = identity_sae(d)
    if keep is not None:  # forget every direction but the first `keep` coordinates
        with torch.no_grad():
            sae.W_dec[keep:d].zero_()
            sae.W_dec[d + keep:].zero_()
    sae.meta.update(model=model, revision=revision, site=SITE)
    return sae


def test_a_copy_of_the_native_dictionary_transfers_perfectly_and_half_of_it_partly(adapter, batch):
    d = adapter.d_model
    native = _dict(d, "step2")
    rows = {r["metric"]: r for r in transfer_metrics(adapter, _dict(d, "step1"), native, SITE, *batch)}
    assert rows["explained_variance"]["transferred"] == pytest.approx(1.0, abs=1e-5)
    assert rows["explained_variance"]["normalised"] == pytest.approx(1.0, abs=1e-5)
    assert rows["kl_sae"]["transferred"] == pytest.approx(0.0, abs=1e-6)
    assert rows["explained_variance"]["floor"] < 0.5  # a random dictionary explains little
    half = {r["metric"]: r for r in transfer_metrics(adapter, _dict(d, "step1", keep=d // 2), native, SITE, *batch)}
    ev = half["explained_variance"]
    assert ev["floor"] < ev["transferred"] < ev["native"]
    assert 0.0 < ev["normalised"] < 1.0
    assert half["kl_sae"]["transferred"] > half["kl_sae"]["native"]  # lower is better for KL
    assert half["kl_sae"]["higher_is_better"] is False
    assert all(r["note"] == "" for r in half.values())


def test_other_runs_are_refused_or_flagged(adapter, batch):
    d = adapter.d_model
    other, native = _dict(d, "main", model="another-seed"), _dict(d, "step2")
    with pytest.raises(MatchError, match="different models"):
        transfer_metrics(adapter, other, native, SITE, *batch)
    rows = transfer_metrics(adapter, other, native, SITE, *batch, allow_other_runs=True)
    assert all(r["note"] == OTHER_RUN_NOTE for r in rows)
    assert check_same_run({"model": "m", "revision": "a"}, {"model": "m", "revision": "b"}) == ""


def test_series_covers_every_ordered_pair_and_the_floor_is_its_own_initialisation(adapter, batch):
    d = adapter.d_model
    saes = [_dict(d, "step1", keep=d // 2), _dict(d, "step2")]
    table = transfer_series([adapter, adapter], saes, ["step1", "step2"], SITE, *batch, progress=False)
    assert set(zip(table["dictionary_from"], table["applied_to"])) == {("step1", "step2"), ("step2", "step1")}
    assert len(table) == 2 * 4
    floor = random_like(saes[1], "x")
    assert not torch.equal(floor.W_dec, random_like(saes[1], "y").W_dec)  # seeded from the pair, not shared
    assert torch.equal(floor.W_dec, random_like(saes[1], "x").W_dec)  # and reproducible
