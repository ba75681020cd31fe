import pytest
import torch

from universality.data import EvalSpans, align_span_tokens, align_tokens, make_eval_spans, tokenize_spans
from universality.errors import ArtifactError, ConfigError, DataError


def test_one_to_one_one_to_many_and_many_to_one():
    # "Hello world": A = [Hello][ world], B = [He][llo][ ][world]
    al = align_tokens([[0, 5], [5, 11]], [[0, 2], [2, 5], [5, 6], [6, 11]])
    assert al.units.tolist() == [[0, 5], [5, 11]]
    assert al.unit_of_a.tolist() == [0, 1] and al.unit_of_b.tolist() == [0, 0, 1, 1]
    ia, ib = al.pairs()
    assert ia.tolist() == [0, 1] and ib.tolist() == [1, 3]
    # the other way round (many-to-one from A's side)
    al2 = align_tokens([[0, 2], [2, 5], [5, 6], [6, 11]], [[0, 5], [5, 11]])
    assert al2.unit_of_a.tolist() == [0, 0, 1, 1]
    # identical tokenizations: one unit per token
    same = align_tokens([[0, 3], [3, 4], [4, 9]], [[0, 3], [3, 4], [4, 9]])
    assert same.units.tolist() == [[0, 3], [3, 4], [4, 9]]


def test_crossing_boundaries_merge_into_one_unit():
    # A = [ab][cd], B = [a][bc][d]: no shared cut inside, so one unit over "abcd"
    al = align_tokens([[0, 2], [2, 4]], [[0, 1], [1, 3], [3, 4]])
    assert al.units.tolist() == [[0, 4]] and al.unit_of_b.tolist() == [0, 0, 0]


def test_skipped_whitespace_and_dropped_units():
    # B (sentencepiece-like) leaves the space at 5 uncovered: unit 2 still spans it for A
    al = align_tokens([[0, 5], [5, 11]], [[0, 5], [6, 11]])
    assert al.units.tolist() == [[0, 5], [5, 11]] and al.n_dropped == 0
    # a gap on one side lets a cut fall inside it
    al = align_tokens([[0, 3], [5, 9]], [[0, 4], [4, 9]])
    assert al.units.tolist() == [[0, 4], [4, 9]]
    # text only A covers (truncated B) is dropped and counted
    al = align_tokens([[0, 3], [3, 5]], [[0, 3]])
    assert al.unit_of_a.tolist() == [0, -1] and al.n_dropped == 1
    # zero-width byte pieces join the unit of their character
    al = align_tokens([[0, 1], [1, 2], [1, 2], [2, 3]], [[0, 1], [1, 1], [1, 3]])
    assert al.units.tolist() == [[0, 1], [1, 3]] and al.unit_of_b.tolist() == [0, 1, 1]


def test_pooling_mean_last_and_matrices_agree():
    al = align_tokens([[0, 5], [5, 11]], [[0, 2], [2, 5], [5, 6], [6, 11]])
    acts_b = torch.arange(8.0).reshape(4, 2)
    mean = al.pool(acts_b, "b", "mean")
    assert mean.tolist() == [[1.0, 2.0], [5.0, 6.0]]
    assert al.pool(acts_b, "b", "last").tolist() == [[2.0, 3.0], [6.0, 7.0]]
    for how in ("mean", "last"):
        assert torch.allclose(al.pool_matrix("b", how) @ acts_b, al.pool(acts_b, "b", how))
    with pytest.raises(DataError):
        al.pool(acts_b[:3], "b")
    with pytest.raises(ConfigError):
        al.pool(acts_b, "b", "max")


def test_several_texts_never_share_a_unit():
    a = [torch.tensor([[0, 2], [2, 4]]), torch.tensor([[0, 3]])]
    b = [torch.tensor([[0, 4]]), torch.tensor([[0, 1], [1, 3]])]
    al = align_tokens(a, b)
    assert al.text_index.tolist() == [0, 1]
    assert al.unit_of_a.tolist() == [0, 0, 1] and al.unit_of_b.tolist() == [0, 1, 1]


def test_eval_spans_align_two_real_tokenizers(corpus_docs, tokenizers_pair, tmp_path):
    spans = make_eval_spans(corpus_docs, n_spans=12, span_chars=200, seed=3)
    assert spans == make_eval_spans(list(reversed(corpus_docs)), n_spans=12, span_chars=200, seed=3)
    assert len(spans) == 12 and all(len(t) <= 200 for t in spans.texts)
    for text, doc_id, off in zip(spans.texts, spans.doc_ids, spans.char_offsets):
        doc = next(d for d in corpus_docs if d.id == doc_id)
        assert doc.text[off : off + len(text)] == text
    spans.save(tmp_path / "spans.json")
    assert EvalSpans.load(tmp_path / "spans.json") == spans
    small, large = tokenizers_pair
    ta, tb = tokenize_spans(spans, small), tokenize_spans(spans, large)
    assert ta.n_text_tokens > tb.n_text_tokens  # the smaller vocabulary cuts finer
    al = align_span_tokens(ta, tb)
    assert al.n_dropped == 0
    assert (al.unit_of_a >= 0).all() and (al.unit_of_b >= 0).all()
    # units tile each span's text exactly, in order
    offset = 0
    for i, text in enumerate(spans.texts):
        units = al.units[al.text_index == i] - offset
        assert "".join(text[s:e] for s, e in units.tolist()) == text
        offset += len(text) + 1
    # large-vocab tokens are never split across units; several small-vocab tokens share units
    assert al.counts("a").max() > 1
    rows_a = torch.randn(ta.n_text_tokens, 5)
    assert al.pool(rows_a, "a").shape == (al.n_units, 5)


def test_eval_spans_file_is_checked(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ArtifactError):
        EvalSpans.load(tmp_path / "x.json")
