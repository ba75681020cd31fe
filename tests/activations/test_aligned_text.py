"""Aligned rows across tokenizers: two tiny models with different vocabularies read the same spans; each
row is one shared unit of text, equal to the evaluation path's pairwise alignment; N-way units hold hand
cases; a tokenizer that skips text is refused; a resumed read continues exactly; a crosscoder trains on it."""

from __future__ import annotations

import pytest
import torch
from activation_helpers import assert_same_batches, read_batches

from universality.activations import aligned_text, span_activations, text_spans
from universality.crosscoder.source import JointSource
from universality.data import align_many, align_span_tokens, align_tokens, tokenize_spans
from universality.errors import ConfigError, DataError
from universality.sae.crosscoder_config import crosscoder_config
from universality.train import RunConfig, TrainConfig, train_saes

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def neox_own_tokenizer(tmp_path_factory):
    import models
    from models.testing import make_tiny_model

    return models.load(str(make_tiny_model("gpt_neox", tmp_path_factory.mktemp("neox400"), seed=4, vocab_size=400)))


@pytest.fixture(scope="module")
def texts(poems):
    return [d.text for d in list(poems)[:3]]


def test_align_many_hand_cases_and_two_sides_equal_align_tokens():
    # "abcdef": A = [ab][cd][ef], B = [abc][def], C = [a][bcd][ef]: B straddles 2 and 4, C straddles 3, so no
    # position inside is free on every side -> one unit
    al = align_many([[[0, 2], [2, 4], [4, 6]], [[0, 3], [3, 6]], [[0, 1], [1, 4], [4, 6]]])
    assert al.units.tolist() == [[0, 6]] and [u.tolist() for u in al.unit_of] == [[0, 0, 0], [0, 0], [0, 0, 0]]
    # "Hello world": A = [Hello][ world], B = [He][llo][ ][world], C = [Hello][ ][wor][ld]: units "Hello", " world"
    al = align_many([[[0, 5], [5, 11]], [[0, 2], [2, 5], [5, 6], [6, 11]], [[0, 5], [5, 6], [6, 9], [9, 11]]])
    assert al.units.tolist() == [[0, 5], [5, 11]] and al.unit_of[2].tolist() == [0, 1, 1, 1]
    x = torch.arange(4.0).unsqueeze(1)
    assert al.pool(x, 1, "last").squeeze(1).tolist() == [1.0, 3.0] and al.pool(x, 2, "mean").squeeze(1).tolist() == [0.0, 2.0]
    # text that one side leaves out is dropped and counted; two sides give align_tokens' units
    a, b = [[0, 3], [3, 5], [5, 9]], [[0, 3], [5, 9]]
    many, pair = align_many([a, b]), align_tokens(a, b)
    assert many.units.tolist() == pair.units.tolist() and many.n_dropped == pair.n_dropped == 1
    assert many.unit_of[0].tolist() == pair.unit_of_a.tolist() and many.unit_of[1].tolist() == pair.unit_of_b.tolist()
    with pytest.raises(ConfigError, match="at least two sides"):
        align_many([a])


def test_text_spans_cut_documents_in_order_at_whitespace():
    doc = "one two three four five six seven eight nine ten eleven twelve"
    spans = text_spans([doc], span_chars=20, min_chars=1)
    assert "".join(spans.texts) == doc and all(len(t) <= 20 for t in spans.texts)
    assert all(t.startswith(" ") for t in spans.texts[1:])  # cut before a space, never inside a word
    assert list(spans.char_offsets) == [doc.index(t) for t in spans.texts]
    with pytest.raises(DataError, match="no document holds a span"):
        text_spans(["   "], span_chars=20)


def test_rows_are_shared_units_equal_to_the_pairwise_evaluation_alignment(tiny_gpt2, neox_own_tokenizer, texts):
    a, b = tiny_gpt2, neox_own_tokenizer
    reader = aligned_text([a, b], texts, [SITE, SITE], batch_size=10_000, span_chars=96, group_spans=1000)
    rows = next(iter(reader))
    # the same spans through the evaluation path: tokenise, run, align the two sides, pool at the last token
    spans = text_spans(texts, span_chars=96)
    ta, tb = tokenize_spans(spans, a.tokenizer), tokenize_spans(spans, b.tokenizer)
    assert not torch.equal(ta.input_ids[:, :8], tb.input_ids[:, :8])  # the tokenizers really differ
    pair = align_span_tokens(ta, tb)
    want_a = pair.pool(span_activations(a, ta, [SITE], progress=False)[SITE], "a", "last")
    want_b = pair.pool(span_activations(b, tb, [SITE], progress=False)[SITE], "b", "last")
    assert rows[f"0:{SITE}"].shape[0] == pair.n_units == want_b.shape[0] > 100 and pair.n_dropped == 0
    torch.testing.assert_close(rows[f"0:{SITE}"], want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows[f"1:{SITE}"], want_b, rtol=1e-5, atol=1e-5)
    # units hold several tokens of the finer side (these two BPEs nest: the larger vocabulary's cuts are a subset)
    assert pair.n_units <= min(ta.n_text_tokens, tb.n_text_tokens) < max(ta.n_text_tokens, tb.n_text_tokens)
    prov = JointSource.aligned(reader).provenance()["sources"]
    assert [p["model"] for p in prov] == [a.name, b.name] and prov[1]["alignment"] == "character units, last token"
    named = JointSource.aligned(reader, models=["pythia", "gpt2"]).provenance()["sources"]
    assert [p["model"] for p in named] == ["pythia", "gpt2"] and named[0]["site"] == SITE
    with pytest.raises(ConfigError, match="1 model names for 2 sites"):
        JointSource.aligned(reader, models=["pythia"])


def test_one_tokenizer_gives_one_row_per_token(tiny_gpt2, texts):
    reader = aligned_text([tiny_gpt2, tiny_gpt2], texts[:1], [SITE, SITE], batch_size=10_000, span_chars=64, group_spans=1000)
    rows = next(iter(reader))
    tokens = tokenize_spans(text_spans(texts[:1], span_chars=64), tiny_gpt2.tokenizer)
    assert rows[f"0:{SITE}"].shape[0] == tokens.n_text_tokens
    torch.testing.assert_close(rows[f"0:{SITE}"], span_activations(tiny_gpt2, tokens, [SITE], progress=False)[SITE])
    assert torch.equal(rows[f"0:{SITE}"], rows[f"1:{SITE}"])


class _SkippingTokenizer:
    """A fast tokenizer that drops every third token of each text (as if it skipped that text)."""

    def __init__(self, inner):
        self.inner, self.is_fast = inner, True
        self.bos_token_id, self.eos_token_id, self.pad_token_id = inner.bos_token_id, inner.eos_token_id, inner.pad_token_id

    def __call__(self, texts, **kw):
        enc = self.inner(texts, **kw)
        keep = [[j for j in range(len(ids)) if j % 3 != 2] for ids in enc["input_ids"]]
        return {"input_ids": [[ids[j] for j in k] for ids, k in zip(enc["input_ids"], keep)],
                "offset_mapping": [[offs[j] for j in k] for offs, k in zip(enc["offset_mapping"], keep)]}


class _Retokenized:
    def __init__(self, adapter, tokenizer):
        self._adapter, self.tokenizer = adapter, tokenizer

    def __getattr__(self, name):
        return getattr(self._adapter, name)


def test_a_tokenizer_that_skips_text_or_has_no_offsets_is_refused(tiny_gpt2, neox_own_tokenizer, texts):
    skipping = _Retokenized(neox_own_tokenizer, _SkippingTokenizer(neox_own_tokenizer.tokenizer))
    reader = aligned_text([tiny_gpt2, skipping], texts, [SITE, SITE], batch_size=64, span_chars=96)
    with pytest.raises(DataError, match=r"disagree on the text of group 0 of epoch 0: \d+ of \d+ units"):
        next(iter(reader))
    slow = _Retokenized(tiny_gpt2, type("Slow", (), {"is_fast": False})())
    with pytest.raises(ConfigError, match="no fast tokenizer"):
        aligned_text([tiny_gpt2, slow], texts, [SITE, SITE])


def test_shuffled_read_resumes_exactly_and_a_crosscoder_trains_on_it(tiny_gpt2, neox_own_tokenizer, texts):
    def make():
        return aligned_text([tiny_gpt2, neox_own_tokenizer], texts, [SITE, SITE], batch_size=48, shuffle_buffer=200,
                            seed=3, epochs=2, span_chars=96, group_spans=3, forward_batch=3)

    full = read_batches(make())
    first = make()
    it = iter(first)
    head = read_batches(it, 7)
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    rest = read_batches(second)
    assert len(full) > 10
    assert_same_batches(head + rest, full)
    width = full[0][f"0:{SITE}"].shape[1]
    cfg = TrainConfig(crosscoder_config((width, width), 32, k=4), site="joint", lr=3e-3)
    reader = aligned_text([tiny_gpt2, neox_own_tokenizer], texts, [SITE, SITE], batch_size=48, shuffle_buffer=200,
                          epochs=None, span_chars=96)
    cc = train_saes(JointSource.aligned(reader), [cfg], RunConfig(steps=5), progress=False)[cfg.key]
    assert cc.meta["trained_steps"] == 5
    assert [s["model"] for s in cc.meta["sources"]] == [tiny_gpt2.name, neox_own_tokenizer.name]


def test_spans_longer_than_a_model_reads_are_cut_to_the_common_text(tiny_gpt2, neox_own_tokenizer, texts):
    limit = 24
    short = _Retokenized(neox_own_tokenizer, neox_own_tokenizer.tokenizer)
    short.max_positions = limit  # this side reads 24 positions (BOS + 23 text tokens)
    reader = aligned_text([tiny_gpt2, short], texts[:1], [SITE, SITE], batch_size=10_000, span_chars=400, group_spans=100)
    rows = next(iter(reader))  # the tail the short side never read is left out on both sides, not refused
    spans = text_spans(texts[:1], span_chars=400)
    covered = tokenize_spans(spans, neox_own_tokenizer.tokenizer, max_len=limit).n_text_tokens
    assert 0 < rows[f"1:{SITE}"].shape[0] <= covered and rows[f"0:{SITE}"].shape == rows[f"1:{SITE}"].shape
    assert reader.units_dropped == 0
