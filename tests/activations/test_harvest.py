import pytest
import torch

from universality.activations import ActivationStore, HarvestConfig, harvest, span_activations
from universality.data import TEXT, PackingConfig, Packer, align_span_tokens, make_eval_spans, tokenize_spans
from universality.errors import ArtifactError, ConfigError, UnknownSiteError

from activation_helpers import SITES, CountingAdapter

PACK = PackingConfig(context_len=32)


def _direct_rows(adapter, docs, sites, packing, include_bos=False, max_rows=None):
    """What harvesting must produce: capture on every packed context, text rows in order."""
    packer = Packer(adapter.tokenizer, packing)
    rows = {s: [] for s in sites}
    ids = []
    for batch in packer.batches(docs, batch_size=16):
        if max_rows is not None and sum(len(i) for i in ids) >= max_rows:
            break
        keep = batch.kind == TEXT if not include_bos else batch.attention_mask.bool()
        acts = adapter.capture(batch.input_ids, sites, attention_mask=batch.attention_mask)
        for s in sites:
            rows[s].append(acts[s][keep].float())
        ids.append(batch.input_ids[keep])
    return {s: torch.cat(v) for s, v in rows.items()}, torch.cat(ids), packer.doc_ids


def test_round_trip_equals_direct_capture_and_manifest_is_self_describing(small_store, tiny_gpt2, poems):
    store = small_store
    expected, token_ids, doc_ids = _direct_rows(tiny_gpt2, poems, SITES, PACK)
    got = store.rows(sites=SITES)
    assert len(store.shards) > 3
    for s in SITES:
        torch.testing.assert_close(got[s], expected[s], rtol=1e-5, atol=1e-5)
    assert torch.equal(got["token_ids"], token_ids)
    assert store.doc_ids == doc_ids
    # each row's document id and character span point at the text its token decodes to
    by_id = {d.id: d for d in poems}
    for i in [0, 7, 500, len(token_ids) - 1]:
        text = by_id[store.doc_ids[int(got["doc_index"][i])]].text[int(got["char_start"][i]) : int(got["char_end"][i])]
        decoded = tiny_gpt2.tokenizer.decode([int(token_ids[i])])
        assert decoded == text or "\ufffd" in decoded  # a lone byte of a multi-byte character
    m = store.manifest
    assert m["model"] == tiny_gpt2.name and m["revision"] == tiny_gpt2.revision and m["family"] == "gpt2"
    assert m["subset_hash"] == poems.hash and m["dataset"]["name"] == "shakespeare"
    assert m["n_tokens"] == store.n_rows == len(token_ids) and m["complete"]
    assert m["sites"][SITES[0]]["width"] == tiny_gpt2.d_model and m["sites"][SITES[0]]["dtype"] == "float32"
    assert m["packing"]["context_len"] == 32 and m["include_bos"] is False
    for s in SITES:
        st = store.stats(s)
        x = expected[s].double()
        torch.testing.assert_close(st["mean"], x.mean(0), rtol=1e-6, atol=1e-9)
        assert st["mean_sq_norm"] == pytest.approx(float(x.pow(2).sum(1).mean()), rel=1e-6)
        assert store.norm_scale(s) == pytest.approx((x.shape[1] / st["mean_sq_norm"]) ** 0.5)


def test_open_checks_expectations(small_store, tiny_gpt2, poems):
    path = small_store.path
    ActivationStore.open(path, expect={"model": tiny_gpt2.name, "site": SITES[0], "subset_hash": poems.hash, "dtype": "float32"})
    with pytest.raises(ArtifactError, match="has model"):
        ActivationStore.open(path, expect={"model": "gpt2-xl"})
    with pytest.raises(ArtifactError, match="no site"):
        ActivationStore.open(path, expect={"site": "blocks.1.hook_resid_post"})
    with pytest.raises(ArtifactError, match="subset_hash"):
        ActivationStore.open(path, expect={"subset_hash": "0" * 16})
    with pytest.raises(ArtifactError, match="not an activation store"):
        ActivationStore.open(path / "nowhere")
    with pytest.raises(UnknownSiteError):
        small_store.stats("blocks.1.hook_mlp_out")


def test_unknown_site_and_foreign_folder_errors(tiny_gpt2, poems, small_store, tmp_path):
    with pytest.raises(UnknownSiteError, match="blocks.7.hook_resid_post"):
        harvest(tiny_gpt2, poems, ["blocks.7.hook_resid_post"], tmp_path / "x", progress=False)
    with pytest.raises(ArtifactError, match="different harvest"):
        harvest(tiny_gpt2, poems, ["blocks.0.hook_resid_pre"], small_store.path, progress=False)
    with pytest.raises(ConfigError):
        HarvestConfig(dtype="int8")


def test_interrupted_harvest_resumes_from_last_complete_shard(tiny_gpt2, poems, small_store, tmp_path):
    out = tmp_path / "resumed"
    flaky = CountingAdapter(tiny_gpt2, fail_after=9)
    kwargs = dict(packing=PACK, batch_size=4, shard_rows=400, progress=False)
    with pytest.raises(KeyboardInterrupt):
        harvest(flaky, poems, SITES, out, **kwargs)
    with pytest.raises(ArtifactError, match="not complete"):
        ActivationStore.open(out)
    partial = ActivationStore.open(out, allow_partial=True)
    n_done = len(partial.shards)
    assert 0 < n_done < len(small_store.shards)
    # a half-written shard (temporary name) is never read and is cleaned up on resume
    (out / ".shard-00099.safetensors.tmp-1-deadbeef").write_bytes(b"garbage")
    resumed = CountingAdapter(tiny_gpt2)
    store = harvest(resumed, poems, SITES, out, **kwargs)
    assert not list(out.glob(".shard-*"))
    total_calls = -(-small_store.manifest["contexts_done"] // 4)
    assert resumed.calls == total_calls - partial.manifest["contexts_done"] // 4  # only the missing batches ran
    a, b = store.rows(sites=SITES), small_store.rows(sites=SITES)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for s in SITES:
        assert torch.equal(store.stats(s)["mean"], small_store.stats(s)["mean"])
        assert store.stats(s)["mean_sq_norm"] == small_store.stats(s)["mean_sq_norm"]
    # a finished harvest is not run again
    again = CountingAdapter(tiny_gpt2)
    harvest(again, poems, SITES, out, **kwargs)
    assert again.calls == 0


def test_bos_rows_max_tokens_and_storage_dtype(tiny_gpt2, poems, tmp_path):
    store = harvest(tiny_gpt2, poems, SITES[:1], tmp_path / "bos", packing=PACK, include_bos=True,
                    max_tokens=300, dtype="bfloat16", background_writer=False, progress=False)
    rows = store.rows(sites=SITES[:1])
    assert store.n_rows == 300 and rows[SITES[0]].dtype == torch.bfloat16
    assert (rows["position"] == 0).sum() >= 300 // 32  # every context's BOS row is kept
    expected, _, _ = _direct_rows(tiny_gpt2, poems, SITES[:1], PACK, include_bos=True, max_rows=300)
    torch.testing.assert_close(rows[SITES[0]].float(), expected[SITES[0]][:300].bfloat16().float())


def test_span_activations_line_up_with_alignment(tiny_gpt2, poems):
    spans = make_eval_spans(poems, n_spans=4, span_chars=120)
    tokens = tokenize_spans(spans, tiny_gpt2.tokenizer)
    rows = span_activations(tiny_gpt2, tokens, SITES[0])[SITES[0]]
    assert rows.shape == (tokens.n_text_tokens, tiny_gpt2.d_model)
    al = align_span_tokens(tokens, tokens)
    assert torch.equal(al.pool(rows, "a", "last"), rows)  # same tokenizer: units are the tokens
    direct = tiny_gpt2.capture(tokens.input_ids[:1], SITES[0], attention_mask=tokens.attention_mask[:1])[SITES[0]][0]
    n0 = int(tokens.text_mask[0].sum())
    torch.testing.assert_close(rows[:n0], direct[tokens.text_mask[0]].float())


def test_moe_routing_sites_are_harvested_in_the_same_pass(poems, tmp_path):
    import models
    from models.testing import make_tiny_model

    moe = models.load(str(make_tiny_model("olmoe", tmp_path / "olmoe")))
    sites = ["blocks.0.mlp.hook_router_logits", "blocks.0.mlp.hook_expert_indices",
             "blocks.0.mlp.hook_expert_weights", "blocks.1.hook_resid_post"]
    counting = CountingAdapter(moe)
    store = harvest(counting, poems, sites, tmp_path / "moe", packing=PACK, batch_size=4, max_tokens=250, progress=False)
    assert counting.calls == -(-store.manifest["contexts_done"] // 4)  # one forward per batch for all sites
    rows = store.rows(sites=sites)
    assert rows["blocks.0.mlp.hook_expert_indices"].dtype == torch.int64
    assert store.manifest["sites"]["blocks.0.mlp.hook_expert_indices"]["kind"] == "int"
    with pytest.raises(ArtifactError, match="no normalisation"):
        store.stats("blocks.0.mlp.hook_expert_indices")
    expected, _, _ = _direct_rows(moe, poems, sites, PACK, max_rows=250)
    for s in sites:
        torch.testing.assert_close(rows[s].float(), expected[s][:250], rtol=1e-5, atol=1e-5)
    batch = next(iter(store.iter_batches(sites, batch_size=32, dtype=torch.float16)))
    assert batch["blocks.0.mlp.hook_expert_indices"].dtype == torch.int64
    assert batch["blocks.0.mlp.hook_router_logits"].shape == (32, moe.sites["blocks.0.mlp.hook_router_logits"])


@pytest.mark.gpu
def test_cuda_harvest_matches_cpu_harvest(tiny_gpt2, poems, small_store, tmp_path):
    import models

    gpu = models.load(str(tiny_gpt2.model.name_or_path), device="cuda")
    store = harvest(gpu, poems, SITES, tmp_path / "cuda", packing=PACK, batch_size=4, shard_rows=400, progress=False)
    a, b = store.rows(sites=SITES), small_store.rows(sites=SITES)
    for s in SITES:
        torch.testing.assert_close(a[s], b[s], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(store.stats(s)["mean"], small_store.stats(s)["mean"], rtol=1e-4, atol=1e-6)
    batch = next(iter(store.iter_batches(SITES, batch_size=64, shuffle_buffer=256, device="cuda")))
    assert batch[SITES[0]].is_cuda
