"""Long documents are tokenised in bounded character chunks, cut only where the tokens do not change:
the packed contexts are identical to tokenising each document whole, and a small token budget reads
only a bounded prefix of a huge document."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from universality.data import Document, Packer, PackingConfig, pack

CFG = PackingConfig(context_len=64)
WHOLE = 10**12  # a chunk size no document reaches: every document tokenised in one piece


class CountingTokenizer:
    """Wraps a fast tokenizer; counts the characters it is asked to tokenise."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.chars = 0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, texts, **kwargs):
        self.calls += 1
        self.chars += sum(len(t) for t in texts) if isinstance(texts, list) else len(texts)
        return self._inner(texts, **kwargs)


def _packed(docs, tok, cfg=CFG, chunk_chars=None):
    packer = Packer(tok, cfg, chunk_chars=chunk_chars)
    contexts = list(packer.contexts(docs))
    return np.stack(contexts), packer.doc_ids, packer.n_text_tokens


def _assert_same(a, b):
    arr_a, ids_a, n_a = a
    arr_b, ids_b, n_b = b
    assert ids_a == ids_b and n_a == n_b
    assert arr_a.shape == arr_b.shape
    assert np.array_equal(arr_a, arr_b)  # token ids, documents, character spans and kinds


def test_default_packing_of_the_shipped_corpus_is_unchanged(corpus_docs, tokenizers_pair):
    tok = tokenizers_pair[1]
    assert max(len(d.text) for d in corpus_docs) > Packer(tok, CFG).chunk_chars  # the longest scene is chunked
    # WHOLE is the unchunked path: every document in one tokenizer call, as before chunking existed
    _assert_same(_packed(corpus_docs, tok), _packed(corpus_docs, tok, chunk_chars=WHOLE))


def test_small_chunks_give_the_same_contexts(corpus_docs, tokenizers_pair):
    docs = sorted(corpus_docs, key=lambda d: -len(d.text))[:3] + corpus_docs[:12]
    for tok in tokenizers_pair:
        _assert_same(_packed(docs, tok, chunk_chars=300), _packed(docs, tok, chunk_chars=WHOLE))
    budget = PackingConfig(context_len=64, max_doc_tokens=500)
    _assert_same(_packed(docs, tokenizers_pair[0], budget, chunk_chars=300),
                 _packed(docs, tokenizers_pair[0], budget, chunk_chars=WHOLE))


def test_awkward_whitespace_and_no_spaces(tokenizers_pair):
    texts = ["a  b   c\n\n  d\te   f " * 40, "x" * 900 + " y" * 10, "  " + "word, " * 200 + "   ", "\n" * 500 + "end"]
    docs = [Document(f"t/{i}", t) for i, t in enumerate(texts)]
    for tok in tokenizers_pair:
        _assert_same(_packed(docs, tok, chunk_chars=50), _packed(docs, tok, chunk_chars=WHOLE))


def test_a_tokenizer_that_prepends_to_every_text_is_not_cut(corpus_docs):
    """A normaliser that adds a prefix to each input (SentencePiece style) would change the tokens at
    every cut; the cut check finds that and tokenises such documents whole."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    raw.train_from_iterator([d.text for d in corpus_docs[:40]],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", unk_token="<unk>")
    docs = corpus_docs[:8]
    _assert_same(_packed(docs, tok, chunk_chars=300), _packed(docs, tok, chunk_chars=WHOLE))


def _huge_document(corpus_docs) -> Document:
    text = "\n\n".join(d.text for d in corpus_docs)
    while len(text) < 5_000_000:
        text += "\n\n" + text
    return Document("huge/0", text[:5_000_000])


def test_a_small_budget_tokenises_a_bounded_prefix_of_a_huge_document(corpus_docs, tokenizers_pair):
    doc = _huge_document(corpus_docs)
    tok = CountingTokenizer(tokenizers_pair[0])
    cfg = PackingConfig(context_len=128, max_doc_tokens=2000)
    batch, _ = pack([doc], tok, cfg)
    assert tok.chars < 60_000, tok.chars  # not 5,000,000
    text_ids = batch.input_ids[batch.kind == 0]
    prefix = tokenizers_pair[0](doc.text[:100_000], add_special_tokens=False)["input_ids"][:2000]
    assert torch.equal(text_ids, torch.tensor(prefix))


def test_reading_a_few_contexts_of_a_huge_document_tokenises_a_bounded_prefix(corpus_docs, tokenizers_pair):
    """No budget, but the consumer stops early (a harvest with max_tokens): tokenisation stays bounded."""
    doc = _huge_document(corpus_docs)
    tok = CountingTokenizer(tokenizers_pair[0])
    batches = Packer(tok, PackingConfig(context_len=64)).batches([doc], batch_size=4)
    taken = list(itertools.islice(batches, 3))
    assert len(taken) == 3
    assert tok.chars < 300_000, tok.chars
