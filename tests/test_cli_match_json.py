"""``universality-tool match --json``: every compare column, each row's note and the match value's meaning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    import models
    from models.testing import make_tiny_model
    from universality.activations import harvest
    from universality.sae import make_sae, sae_config

    root = tmp_path_factory.mktemp("cli_match")
    make_tiny_model("gpt2", root / "model")
    adapter = models.load(str(root / "model"), device="cpu")
    texts = [f"the quick brown fox {i} jumps over the lazy dog, number {i * 7} of the night" for i in range(16)]
    harvest(adapter, texts, [SITE], root / "store", batch_size=4, shard_rows=256, progress=False)
    for name, seed in (("sae_a", 0), ("sae_b", 1)):
        make_sae(sae_config("topk", adapter.d_model, 32, k=4), seed=seed,
                 meta={"model": "model", "site": SITE}).save(root / name)
    return root


def test_match_json_carries_every_column_the_notes_and_the_value_meaning(artifacts, capsys, tmp_path):
    from universality.cli import main
    from universality.match.compare import COLUMNS

    out = tmp_path / "m.json"
    argv = ["match", str(artifacts / "sae_a"), str(artifacts / "sae_b"), "--store", str(artifacts / "store"),
            "--n-perm", "9", "--n-boot", "20", "--boot-block", "8", "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["value_meaning"].startswith("sum of the matched pairs' similarities")
    rows = {(m["metric"], m["direction"]): m for m in written["metrics"]}
    for m in written["metrics"]:
        assert set(m) == set(COLUMNS)  # old columns, new columns, and the note of every row
        assert isinstance(m["note"], str)
    mppc = rows[("mppc", "a->b")]
    assert mppc["p_method"] in ("perm(9)", "normal tail from 9 perms", "perm(9); null constant")
    assert mppc["p_resolution"] == pytest.approx(0.1)
    assert mppc["ci_low"] <= mppc["value"] <= mppc["ci_high"]
    assert "block bootstrap (20), blocks of 8 tokens" in mppc["ci_method"]
    assert "dead" in mppc["note"]
    assert rows[("pw_mcc", "a<->b")]["value"] == rows[("mean_matched_cosine", "a<->b")]["value"]
    weight = rows[("mean_matched_cosine", "a<->b")]
    assert weight["ci_low"] is None and weight["ci_method"].startswith("none")  # NaN -> JSON null


def test_match_table_prints_the_new_columns_and_refuses_bad_counts(artifacts, capsys):
    from universality.cli import main

    a, b = str(artifacts / "sae_a"), str(artifacts / "sae_b")
    assert main(["match", a, b, "--n-perm", "3"]) == 0
    shown = capsys.readouterr().out
    assert "value_meaning: sum of the matched pairs' similarities" in shown
    assert all(col in shown for col in ("p_method", "p_resolution", "ci_low", "ci_high", "ci_method", "note"))
    for flag in ("--n-boot", "--n-perm", "--boot-block"):
        assert main(["match", a, b, flag, "-1"]) == 2
        assert f"{flag} must be >=" in capsys.readouterr().err
