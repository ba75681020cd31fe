import pytest
import torch

from universality.data import BOS, PAD, TEXT, Packer, PackingConfig, TextsSource, pack
from universality.errors import ConfigError, DataError


def _docs(corpus_docs, n=6):
    return [d for d in corpus_docs if d.meta["genre"] == "poetry"][:n]


def _text_of_rows(batch, doc_ids, by_id, i):
    keep = batch.kind[i] == TEXT
    return [(doc_ids[int(d)], by_id[doc_ids[int(d)]].text[int(s):int(e)])
            for d, s, e in zip(batch.doc_index[i][keep], batch.char_start[i][keep], batch.char_end[i][keep])]


@pytest.mark.parametrize("separator", [True, False])
@pytest.mark.parametrize("every", [True, False])
def test_packing_keeps_every_token_once_in_order_with_char_spans(corpus_docs, tokenizers_pair, separator, every):
    tok = tokenizers_pair[0]
    docs = _docs(corpus_docs)
    batch, doc_ids = pack(docs, tok, PackingConfig(context_len=37, doc_separator=separator, bos_every_context=every))
    assert doc_ids == [d.id for d in docs]
    assert batch.input_ids.shape[1] == 37
    # the text tokens, read in order, are exactly each document's tokens, document by document
    stream_ids = batch.input_ids[batch.kind == TEXT]
    expected = torch.cat([torch.tensor(tok(d.text, add_special_tokens=False)["input_ids"]) for d in docs])
    assert torch.equal(stream_ids, expected)
    # the character spans cover each document's text exactly
    by_id = {d.id: d for d in docs}
    pieces = [p for i in range(len(batch)) for p in _text_of_rows(batch, doc_ids, by_id, i)]
    for d in docs:
        assert "".join(t for doc, t in pieces if doc == d.id) == d.text
    bos_id = tok.bos_token_id
    if every:
        assert (batch.kind[:, 0] == BOS).all() and (batch.input_ids[:, 0] == bos_id).all()
    n_bos = int((batch.kind == BOS).sum())
    if separator and not every:
        assert n_bos == len(docs)
    if not separator and not every:
        assert n_bos == 0
    if separator:  # a BOS precedes the first token of every document
        flat_kind, flat_doc = batch.kind.flatten(), batch.doc_index.flatten()
        firsts = [int((flat_doc == i).nonzero()[0]) for i in range(len(docs))]
        assert all(flat_kind[f - 1] == BOS for f in firsts)
    assert (batch.kind[:-1] != PAD).all()  # only the last context is padded
    assert torch.equal(batch.attention_mask, (batch.kind != PAD).long())
    assert (batch.doc_index[batch.kind != TEXT] == -1).all()


def test_packing_drop_last_and_determinism(corpus_docs, tokenizers_pair):
    tok = tokenizers_pair[1]
    docs = _docs(corpus_docs, 3)
    full, _ = pack(docs, tok, PackingConfig(context_len=50))
    again, _ = pack(docs, tok, PackingConfig(context_len=50))
    assert torch.equal(full.input_ids, again.input_ids)
    dropped, _ = pack(docs, tok, PackingConfig(context_len=50, drop_last=True))
    assert len(dropped) == len(full) - 1 and (dropped.kind != PAD).all()
    packer = Packer(tok, PackingConfig(context_len=50))
    batches = list(packer.batches(docs, batch_size=4, start_context=3))
    assert torch.equal(torch.cat([b.input_ids for b in batches]), full.input_ids[3:])
    assert batches[0].context_index.tolist() == [3, 4, 5, 6]


def test_packing_errors(tokenizers_pair):
    with pytest.raises(ConfigError):
        PackingConfig(context_len=1)
    with pytest.raises(DataError):
        pack(TextsSource([""]), tokenizers_pair[0], PackingConfig(context_len=8))

    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="not a fast tokenizer"):
        Packer(Slow())
