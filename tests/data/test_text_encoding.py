"""Text that is not valid UTF-8 (bytes that do not decode, lone surrogates, files in another encoding)
gives a one-line ``problem; fix`` DataError naming the text and the offset, never a traceback."""

from __future__ import annotations

import gzip
import json

import pytest

from universality.data import Document, JsonlSource, Packer, PackingConfig, TextFileSource, TextsSource, pack
from universality.data.sources import as_documents
from universality.errors import DataError


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "; " in text, text
    return text


def test_bytes_that_decode_as_utf8_are_text():
    docs = list(TextsSource([b"caf\xc3\xa9 au lait", "plain"]))
    assert [d.text for d in docs] == ["café au lait", "plain"]
    assert [d.text for d in as_documents([b"one", "two"])] == ["one", "two"]


def test_bytes_that_do_not_decode_are_refused_with_the_offset():
    with pytest.raises(DataError) as info:
        TextsSource(["fine", b"abc \xff\xfe def"])
    text = _one_line(info.value)
    assert "text 1" in text and "not valid UTF-8" in text and "0xff at byte 4" in text and "decode" in text
    with pytest.raises(DataError, match="not valid UTF-8"):
        as_documents([b"\x80"])


def test_lone_surrogates_are_refused():
    with pytest.raises(DataError) as info:
        TextsSource(["abc \udcff def"])
    assert "text 0" in _one_line(info.value) and "character 4" in str(info.value)


def test_document_of_bytes_says_to_decode():
    with pytest.raises(DataError) as info:
        Document("d", b"abc")
    assert "decode" in _one_line(info.value)


def test_text_file_in_another_encoding(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 noir".encode("latin-1"))
    with pytest.raises(DataError) as info:
        list(TextFileSource(path))
    text = _one_line(info.value)
    assert str(path) in text and "not valid utf-8" in text and "encoding=" in text
    assert [d.text for d in TextFileSource(path, encoding="latin-1")] == ["café noir"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_jsonl_file_with_bytes_that_do_not_decode(tmp_path, suffix):
    good = json.dumps({"text": "first line"}).encode() + b"\n"
    bad = b'{"text": "caf\xe9"}\n'
    path = tmp_path / f"data{suffix}"
    data = good + bad
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    with pytest.raises(DataError) as info:
        list(JsonlSource(path))
    text = _one_line(info.value)
    assert str(path) in text and "UTF-8" in text and "line 2" in text


def test_packer_names_the_document_with_a_lone_surrogate(corpus_docs, tokenizers_pair):
    docs = [corpus_docs[0], Document("bad/7", "fine text \udcff more")]
    with pytest.raises(DataError) as info:
        pack(docs, tokenizers_pair[0], PackingConfig(context_len=16))
    text = _one_line(info.value)
    assert "'bad/7'" in text and "character 10" in text
    with pytest.raises(DataError, match="bad/7"):  # also on the chunked path of long documents
        list(Packer(tokenizers_pair[0], PackingConfig(context_len=16), chunk_chars=8).contexts(docs[1:]))
