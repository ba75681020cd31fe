"""``universality-tool cards``: one dictionary's page and two dictionaries' pair cards from a real
store of a tiny GPT-2, with the tokenizer and the direct logit effects from ``--model``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from universality.cards.card import CardSet

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    import models
    from models.testing import make_tiny_model
    from universality.activations import harvest
    from universality.sae import make_sae, sae_config

    root = tmp_path_factory.mktemp("cli_cards")
    make_tiny_model("gpt2", root / "model")
    adapter = models.load(str(root / "model"), device="cpu")
    texts = [f"the quick brown fox {i} jumps over the lazy dog, number {i * 7} of the night" for i in range(16)]
    harvest(adapter, texts, [SITE], root / "store", batch_size=4, shard_rows=96, progress=False)
    for name, seed in (("sae_a", 0), ("sae_b", 1)):
        make_sae(sae_config("topk", adapter.d_model, 32, k=4), seed=seed,
                 meta={"model": "model", "site": SITE}).save(root / name)
    return root


def test_one_dictionary_page_with_tokens_and_logit_effects(artifacts, capsys, tmp_path):
    from universality.cli import main

    out = tmp_path / "cards"
    argv = ["cards", str(artifacts / "sae_a"), "--store", str(artifacts / "store"), "--out", str(out),
            "--model", str(artifacts / "model"), "--neuronpedia", str(tmp_path / "np"), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    cs = CardSet.load(out / "cards.json")
    assert summary["cards_a"] == len(cs.cards_a) > 0
    assert summary["page_bytes"] == (out / "cards.html").stat().st_size
    card = cs.cards_a[0]
    assert any(" fox" in c.tokens or "fox" in "".join(c.tokens) for c in cs.cards_a for c in c.top)
    assert len(card.promoted) == 8 and len(card.suppressed) == 8  # a residual site of a model with an unembedding
    assert card.top[0].value == pytest.approx(card.max_value, abs=1e-3)
    assert sorted(p.name for p in (tmp_path / "np").iterdir())[0].startswith("batch-")
    # the store spans several shards: contexts joined across shard boundaries, rows counted once
    assert cs.text["n_tokens"] == summary["tokens"] <= 16384


def test_two_dictionaries_pair_cards_and_refusals(artifacts, capsys, tmp_path):
    from universality.cli import main

    a, b, store = str(artifacts / "sae_a"), str(artifacts / "sae_b"), str(artifacts / "store")
    out = tmp_path / "pairs"
    assert main(["cards", a, b, "--store", store, "--out", str(out), "--n-shown", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cs = CardSet.load(out / "cards.json")
    assert summary["pair_cards"] == len(cs.pairs) <= 10
    assert cs.meta["basis"] == "shared"  # same model and site: decoder cosines shown
    assert all(p.cosine is not None for p in cs.pairs)
    assert set(cs.groups) >= {"best matches", "worst matches"}
    assert cs.text["tokens_from"].startswith("no tokenizer")
    # refusals: a folder with other files, a bad count
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["cards", a, "--store", store, "--out", str(tmp_path / "busy")]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert main(["cards", a, "--store", store, "--out", str(out), "--max-rows", "1"]) == 2
    assert "--max-rows must be >= 2" in capsys.readouterr().err
