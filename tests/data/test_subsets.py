import pytest

from universality.data import AllOf, Complement, HashFraction, MetaEquals, TextRegex, TextsSource, select_subset
from universality.data.subsets import hash_unit, subset_definition
from universality.errors import ConfigError, DataError


def test_hash_fraction_is_reproducible_and_about_the_fraction(corpus_docs):
    a = select_subset(corpus_docs, HashFraction(0.3, salt="s"), name="shakespeare")
    b = select_subset(list(reversed(corpus_docs)), HashFraction(0.3, salt="s"), name="shakespeare")
    assert set(a.ids) == set(b.ids)
    assert a.definition_hash == b.definition_hash
    assert abs(len(a) / len(corpus_docs) - 0.3) < 0.06  # 909 Bernoulli(0.3) draws: sd 0.015
    # membership depends on the id only: adding documents does not change who else is in
    extra = corpus_docs + [type(corpus_docs[0])("new/doc", "text")]
    assert set(a.ids) <= set(select_subset(extra, HashFraction(0.3, salt="s")).ids)
    other = select_subset(corpus_docs, HashFraction(0.3, salt="t"))
    assert set(other.ids) != set(a.ids) and other.hash != a.hash


def test_subset_and_complement_partition_the_source(corpus_docs):
    for spec in (HashFraction(0.5), MetaEquals("genre", ("poetry", "romance")), TextRegex(r"\bghost\b", "i")):
        inside = select_subset(corpus_docs, spec)
        outside = select_subset(corpus_docs, Complement(spec))
        assert not set(inside.ids) & set(outside.ids)
        assert set(inside.ids) | set(outside.ids) == {d.id for d in corpus_docs}
        assert inside.hash != outside.hash


def test_meta_regex_and_intersection_select_what_they_say(corpus_docs):
    poetry = select_subset(corpus_docs, MetaEquals("genre", "poetry"))
    assert len(poetry) == 170 and all(d.meta["genre"] == "poetry" for d in poetry)
    ghosts = select_subset(corpus_docs, TextRegex(r"Ghost"))
    assert all("Ghost" in d.text for d in ghosts)
    both = select_subset(corpus_docs, AllOf((MetaEquals("genre", "tragedy"), TextRegex("Ghost"))))
    assert set(both.ids) == {d.id for d in ghosts if d.meta["genre"] == "tragedy"}


def test_subset_records_definition_and_ids_hashes(corpus_docs):
    s = select_subset(corpus_docs, Complement(MetaEquals("genre", "poetry")), name="shakespeare")
    d = s.describe()
    assert d["definition"] == {"kind": "Complement", "of": {"kind": "MetaEquals", "field": "genre", "values": ["poetry"]}}
    assert d["n_documents"] == 909 - 170 and len(d["hash"]) == 16
    assert select_subset(corpus_docs, None).definition == {"kind": "All"}
    assert subset_definition(HashFraction(0.5)) == {"kind": "HashFraction", "fraction": 0.5, "salt": ""}


def test_empty_subset_and_bad_specs_raise():
    docs = TextsSource(["aaa", "bbb"])
    with pytest.raises(DataError, match="selects no documents"):
        select_subset(docs, TextRegex("zzz"))
    with pytest.raises(ConfigError):
        HashFraction(0.0)
    with pytest.raises(ConfigError):
        TextRegex("(")
    with pytest.raises(ConfigError):
        MetaEquals("genre", ())
    assert 0.0 <= hash_unit("x") < 1.0 and hash_unit("x") == hash_unit("x")
