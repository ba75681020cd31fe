"""The same config and seed give the same bytes on the CPU: stores, dictionaries and tables.

Each pipeline step runs twice from scratch (with the global torch RNG deliberately put in a
different state in between, so nothing may depend on it) and the artifacts are compared
bitwise: file digests, tensors with ``torch.equal``, tables with exact float equality.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import reliability_child as rc
from universality import synthetic as syn
from universality.activations import ActivationStore
from universality.io import read_json, sha256_file
from universality.match import compare
from universality.sae import SAE, sae_config
from universality.train import RunConfig, TrainConfig, train_saes

D_IN, N_FEAT = 12, 24
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def configs(seeds=(0, 1)):
    return [c for s in SITES for seed in seeds for c in (
        TrainConfig(sae_config("topk", D_IN, 32, k=3), site=s, seed=seed, lr=3e-3, warmup_steps=3),
        TrainConfig(sae_config("relu", D_IN, 32, sparsity_coeff=0.3), site=s, seed=seed, lr=3e-3, remedy="resample"),
        TrainConfig(sae_config("jumprelu", D_IN, 32, sparsity_coeff=0.5), site=s, seed=seed, lr=3e-3, remedy="ghost"),
    )]


def source():
    dicts = {s: syn.planted_dictionary(N_FEAT, D_IN, seed=i) for i, s in enumerate(SITES)}
    return syn.PlantedSource(dicts, syn.feature_probabilities(N_FEAT, 3.0), 64, seed=4, noise_std=0.01)


def train_into(out: Path, global_seed: int, seeds=(0, 1)) -> dict[str, SAE]:
    torch.manual_seed(global_seed)  # unrelated global RNG state: training must not read it
    run = RunConfig(steps=16, dead_window=128, resample_every=4, seed=7, out_dir=str(out))
    return train_saes(source(), configs(seeds), run, meta={"model": "planted"}, progress=False)


def folder_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in rc.visible_files(root)}


def test_same_config_and_seed_give_bitwise_identical_dictionaries(tmp_path):
    out = tmp_path / "out"
    first = train_into(out, global_seed=1)
    first_files = folder_digests(out)
    shutil.move(out, tmp_path / "first")
    second = train_into(out, global_seed=2)  # same path, so cfg.json names the same out_dir
    assert len(first_files) == 2 * len(configs())
    assert folder_digests(out) == first_files  # every cfg.json and weights file, byte for byte
    for key, sae in first.items():
        for name, value in sae.state_dict().items():
            assert torch.equal(value, second[key].state_dict()[name]), (key, name)
        assert sae.meta == second[key].meta
    # not vacuous: another seed gives other dictionaries
    other = train_into(tmp_path / "other", global_seed=1, seeds=(5, 6))
    assert not torch.equal(other[f"{SITES[0]}/topk-32-s5"].W_dec, first[f"{SITES[0]}/topk-32-s0"].W_dec)


def test_same_harvest_gives_bitwise_identical_store(tiny_adapter, docs_file, tmp_path):
    stores = [rc.run_harvest({"docs": str(docs_file), "out": str(tmp_path / name)}, adapter=tiny_adapter)
              for name in ("a", "b")]
    a, b = (read_json(s.path / "manifest.json") for s in stores)
    a.pop("created"), b.pop("created")
    assert a == b  # includes every shard's sha256
    files_a, files_b = folder_digests(stores[0].path), folder_digests(stores[1].path)
    files_a.pop("manifest.json"), files_b.pop("manifest.json")
    assert files_a == files_b and len(files_a) == 2 * len(a["shards"])
    # and the same reader config streams the same batches
    ra = stores[0].iter_batches(rc.HARVEST_SITES, batch_size=50, shuffle_buffer=300, seed=3)
    rb = ActivationStore.open(stores[1].path).iter_batches(rc.HARVEST_SITES, batch_size=50, shuffle_buffer=300, seed=3)
    for xa, xb in zip(ra, rb, strict=True):
        for site in rc.HARVEST_SITES:
            assert torch.equal(xa[site], xb[site])


def test_same_dictionaries_give_identical_comparison_tables(tmp_path):
    saes = train_into(tmp_path / "saes", global_seed=0)
    a, a2 = saes[f"{SITES[0]}/topk-32-s0"], saes[f"{SITES[0]}/topk-32-s1"]
    b, b2 = saes[f"{SITES[1]}/topk-32-s0"], saes[f"{SITES[1]}/topk-32-s1"]
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(0))

    def table(global_seed: int) -> pd.DataFrame:
        torch.manual_seed(global_seed)
        return compare(a, b, activations=x, skyline=(a2, b2), n_perm=4, seed=11)

    first, second = table(1), table(2)
    assert len(first) > 10 and first["value"].notna().any()
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    assert not table(1).equals(compare(a, b2, activations=x, skyline=(a2, b), n_perm=4, seed=11))


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_LAYER_FLOW = [
    "study=layer_flow",
    "study.tokenizer_vocab=300",
    "study.models=[{name: gpt2, zoo: tiny_gpt2, data: D, overrides: {steps: 16, warmup_steps: 4, d_model: 32}}]",
    "study.corpus.max_docs=40",
    "study.sites=[blocks.0.hook_resid_post, blocks.1.hook_attn_out, blocks.1.hook_resid_post]",
    "study.harvest.train_tokens=2048",
    "study.harvest.eval_spans=16",
    "study.harvest.span_chars=120",
    "study.sae.steps=30",
    "study.sae.batch_size=128",
    "study.sae.expansion=2",
    "study.sae.topk.k=4",
    "study.sae.seeds=[0, 1]",
]


def run_tiny_study(out: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from universality.study.config import register_configs, study_from_dict
    from universality.study.runner import run_study

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY_LAYER_FLOW, f"study.out_dir={out}"])
    return run_study(study_from_dict(OmegaConf.to_container(cfg.study, resolve=True)), progress=False).root


@pytest.mark.slow
def test_tiny_study_twice_gives_identical_tables(tmp_path):
    """Two runs of a tiny one-model study (its own zoo model, store, SAEs, eval activations and
    the layer-flow analysis) write byte-identical results.csv and tables."""
    outs = [run_tiny_study(tmp_path / name) for name in ("one", "two")]
    tables = [sorted(p.relative_to(o).as_posix() for p in (o / "tables").glob("*.csv")) for o in outs]
    assert tables[0] == tables[1] and tables[0]
    for rel in ["results.csv", *tables[0]]:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    # every cached product (model and SAE weights, shards, eval activations, tokenizer) is
    # byte-identical too; the JSON documents differ only in timings and folder names
    cache = [folder_digests(o / "cache") for o in outs]
    assert cache[0].keys() == cache[1].keys()
    binary = [k for k in cache[0] if not k.endswith(".json")]
    assert any(k.endswith("weights.safetensors") for k in binary) and any("/shard-" in k for k in binary)
    assert {k: cache[0][k] for k in binary} == {k: cache[1][k] for k in binary}
    for rel in (k for k in cache[0] if k.endswith("/cfg.json") and "/saes/" in k):
        docs = [read_json(o / "cache" / rel) for o in outs]
        assert "out_dir" not in docs[0]["train"]["run"]  # folders are not recorded, so the documents are equal
        assert docs[0] == docs[1], rel  # includes weights_sha256 and the final metrics
