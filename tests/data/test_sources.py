import gzip
import json
import sys

import pytest

from universality.data import (
    Document,
    HFDatasetSource,
    JsonlSource,
    SourceConfig,
    TextFileSource,
    TextsSource,
    open_source,
    shakespeare,
)
from universality.errors import ConfigError, DataError


def test_shipped_corpus_has_stable_unique_ids_and_metadata(corpus_docs):
    assert len(corpus_docs) == 909
    ids = [d.id for d in corpus_docs]
    assert len(set(ids)) == len(ids)
    assert ids == [d.id for d in shakespeare()]  # same order every time
    by_id = {d.id: d for d in corpus_docs}
    assert "Shall I compare thee to a summer's day?" in by_id["sonnets/018"].text
    assert by_id["hamlet/001"].meta["title"].startswith("Hamlet")
    assert {d.meta["genre"] for d in corpus_docs} == {"comedy", "history", "tragedy", "romance", "poetry"}
    assert all(d.text.strip() for d in corpus_docs)
    assert "gutenberg" not in by_id["hamlet/001"].text.lower()


def test_jsonl_source_ids_meta_and_compression(tmp_path):
    rows = [{"text": "alpha", "uid": "a1", "domain": "x", "nested": {"k": 1}}, {"text": "beta", "uid": "b2", "domain": "y"}]
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = list(JsonlSource(path, id_field="uid"))
    assert [d.id for d in docs] == ["a1", "b2"]
    assert docs[0].meta["domain"] == "x" and "nested" not in docs[0].meta
    docs = list(JsonlSource(path, name="d"))
    assert [d.id for d in docs] == ["d/0", "d/1"]
    assert list(JsonlSource(path, meta_fields=["domain"], limit=1))[0].meta == {"source": "d", "domain": "x"}


def test_jsonl_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": 1}\n')
    with pytest.raises(DataError, match="duplicate document id"):
        list(JsonlSource(path, id_field="id"))
    path.write_text('{"body": "a"}\n')
    with pytest.raises(DataError, match="no 'text' field"):
        list(JsonlSource(path))
    path.write_text("not json\n")
    with pytest.raises(DataError, match="not valid JSON"):
        list(JsonlSource(path))
    with pytest.raises(DataError, match="does not exist"):
        JsonlSource(tmp_path / "missing.jsonl")


def test_text_files_by_file_and_paragraph(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\n\nthree")
    (tmp_path / "b.txt").write_text("solo")
    assert [d.id for d in TextFileSource(tmp_path)] == ["a", "b"]
    paras = list(TextFileSource(tmp_path, split="paragraph"))
    assert [(d.id, d.text) for d in paras] == [("a/0", "one"), ("a/1", "two"), ("a/2", "three"), ("b/0", "solo")]


def test_texts_source_and_document_validation():
    assert [d.id for d in TextsSource(["x", "y"], name="t")] == ["t/0", "t/1"]
    with pytest.raises(DataError):
        Document("", "text")
    with pytest.raises(DataError):
        TextsSource("a single string")


def test_hf_source_imports_datasets_lazily_and_reads_local_json(tmp_path):
    sys.modules.pop("datasets", None)
    src = HFDatasetSource("json", data_files=str(tmp_path / "x.jsonl"), text_field="text", limit=2)
    assert "datasets" not in sys.modules  # building a source imports nothing
    pytest.importorskip("datasets")
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}", "lang": "en"}) for i in range(3)))
    docs = list(src)
    assert [(d.id, d.text, d.meta["lang"]) for d in docs] == [("json/0", "t0", "en"), ("json/1", "t1", "en")]


def test_source_config():
    assert open_source(SourceConfig(kind="shakespeare", limit=3)).name == "shakespeare"
    with pytest.raises(ConfigError):
        SourceConfig(kind="jsonl")
    with pytest.raises(ConfigError):
        SourceConfig(kind="ftp", path="x")
