"""Property-based tests (hypothesis) for subset definitions and config validation.

Subsets: hash-fraction subsets are deterministic, nested for growing fractions, a spec and its
complement partition D, AllOf is the intersection, and the definition hash is stable under
re-construction and changes with the parameters. Configs: random valid StudyConfig / TrainConfig /
SAEConfig mappings round-trip (also through JSON); random invalid values raise ConfigError with a
one-line "problem; fix" message and never another exception type. (The site grammar has its own
property tests in tests/test_sites.py.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from universality.data import AllOf, Complement, HashFraction, MetaEquals, TextRegex
from universality.data.sources import Document
from universality.data.subsets import select_subset, subset_definition
from universality.errors import ConfigError, DataError
from universality.io import stable_hash
from universality.sae.config import BUILTIN_OPTIONS, SAEConfig
from universality.sae.registry import architectures
from universality.sites import HOOKS
from universality.study.config import ANALYSES, study_from_dict
from universality.train.config import REMEDIES, TrainConfig
from universality.zoo.config import preset_names

SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=15)


def _one_line_config_error(fn, *args, **kwargs) -> ConfigError:
    """Call ``fn``; it must raise ConfigError (nothing else) with a one-line 'problem; fix' message."""
    try:
        fn(*args, **kwargs)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and "\r" not in text, text
        problem, sep, fix = text.partition("; ")
        assert sep and problem and fix, text
        return exc
    except Exception as exc:  # noqa: BLE001 - the property is "no other exception type"
        pytest.fail(f"{type(exc).__name__} instead of ConfigError: {exc}")
    pytest.fail(f"accepted invalid input {args!r} {kwargs!r}")


# ==================================================================================== subsets
ids = st.text(alphabet=string.ascii_letters + string.digits + "/_-", min_size=1, max_size=12)
genres = st.sampled_from(["poetry", "tragedy", "comedy", "history"])


@st.composite
def documents(draw, min_size: int = 1, max_size: int = 40) -> list[Document]:
    keys = draw(st.lists(ids, min_size=min_size, max_size=max_size, unique=True))
    words = st.lists(st.sampled_from(["ghost", "king", "love", "night", "sea", "Ghost"]), min_size=1, max_size=6)
    return [Document(k, " ".join(draw(words)), {"genre": draw(genres)}) for k in keys]


fractions = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)
salts = st.text(max_size=8)
patterns = st.sampled_from([r"ghost", r"\bking\b", r"^love", r"sea$", r"night|sea"])


@st.composite
def leaf_specs(draw):
    kind = draw(st.sampled_from(["hash", "meta", "regex"]))
    if kind == "hash":
        return HashFraction(draw(fractions), draw(salts))
    if kind == "meta":
        return MetaEquals("genre", tuple(draw(st.lists(genres, min_size=1, max_size=3, unique=True))))
    return TextRegex(draw(patterns), draw(st.sampled_from(["", "i"])))


specs = st.recursive(leaf_specs(), lambda inner: st.one_of(
    inner.map(Complement), st.lists(inner, min_size=1, max_size=3).map(lambda ps: AllOf(tuple(ps)))), max_leaves=4)


def _kept(docs, spec) -> set[str]:
    return {d.id for d in docs if spec.keep(d)}


@SETTINGS
@given(docs=documents(), f=fractions, salt=salts, data=st.data())
def test_hash_fraction_is_deterministic_and_independent_of_order(docs, f, salt, data):
    shuffled = data.draw(st.permutations(docs))
    assert _kept(docs, HashFraction(f, salt)) == _kept(shuffled, HashFraction(f, salt))
    assert _kept(docs, HashFraction(f, salt)) == _kept(docs, HashFraction(float(f), str(salt)))
    extra = data.draw(documents(max_size=5))
    known = {d.id for d in docs}
    grown = docs + [d for d in extra if d.id not in known]
    assert _kept(grown, HashFraction(f, salt)) & known == _kept(docs, HashFraction(f, salt))  # adding docs moves nobody


@SETTINGS
@given(docs=documents(), f1=fractions, f2=fractions, salt=salts)
def test_hash_fractions_are_nested(docs, f1, f2, salt):
    lo, hi = sorted((f1, f2))
    assert _kept(docs, HashFraction(lo, salt)) <= _kept(docs, HashFraction(hi, salt))
    assert _kept(docs, HashFraction(1.0, salt)) == {d.id for d in docs}


@SETTINGS
@given(docs=documents(), spec=specs)
def test_spec_and_complement_partition_the_documents(docs, spec):
    inside, outside = _kept(docs, spec), _kept(docs, Complement(spec))
    assert not inside & outside
    assert inside | outside == {d.id for d in docs}
    assert _kept(docs, Complement(Complement(spec))) == inside
    for s, chosen in ((spec, inside), (Complement(spec), outside)):
        if chosen:
            assert set(select_subset(docs, s).ids) == chosen
        else:
            with pytest.raises(DataError, match="selects no documents"):
                select_subset(docs, s)


@SETTINGS
@given(docs=documents(), parts=st.lists(specs, min_size=1, max_size=3))
def test_all_of_is_the_intersection(docs, parts):
    expected = set.intersection(*[_kept(docs, p) for p in parts])
    assert _kept(docs, AllOf(tuple(parts))) == expected
    assert _kept(docs, AllOf(list(parts))) == expected


def _rebuild(spec):
    """The same spec built again from its parameters (a fresh object, lists instead of tuples)."""
    if isinstance(spec, Complement):
        return Complement(_rebuild(spec.of))
    if isinstance(spec, AllOf):
        return AllOf([_rebuild(p) for p in spec.parts])
    if isinstance(spec, MetaEquals):
        return MetaEquals(spec.field, list(spec.values))
    return type(spec)(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


@SETTINGS
@given(spec=specs)
def test_definition_hash_is_stable_under_reconstruction(spec):
    definition = subset_definition(spec)
    assert subset_definition(_rebuild(spec)) == definition
    assert stable_hash(subset_definition(_rebuild(spec))) == stable_hash(definition)
    assert json.loads(json.dumps(definition)) == definition  # a plain JSON document


@SETTINGS
@given(f1=fractions, f2=fractions, s1=salts, s2=salts, docs=documents(min_size=1))
def test_definition_hash_changes_with_the_parameters(f1, f2, s1, s2, docs):
    h = lambda spec: stable_hash(subset_definition(spec))  # noqa: E731
    same = (f1 == f2) and (s1 == s2)
    assert (h(HashFraction(f1, s1)) == h(HashFraction(f2, s2))) == same
    assert h(Complement(HashFraction(f1, s1))) != h(HashFraction(f1, s1))
    assert h(AllOf((HashFraction(f1, s1),))) != h(HashFraction(f1, s1))
    assert h(MetaEquals("genre", ("poetry",))) != h(MetaEquals("genre", ("tragedy",)))
    assert h(TextRegex("ghost")) != h(TextRegex("ghost", "i"))


junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@SETTINGS
@given(data=st.data())
def test_invalid_subset_specs_raise_config_error(data):
    which = data.draw(st.sampled_from(["fraction", "salt", "field", "values", "pattern", "flags", "of", "parts"]))
    if which == "fraction":
        bad = data.draw(junk.filter(lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and 0 < v <= 1)))
        _one_line_config_error(HashFraction, bad)
    elif which == "salt":
        _one_line_config_error(HashFraction, 0.5, data.draw(junk.filter(lambda v: not isinstance(v, str))))
    elif which == "field":
        bad = data.draw(junk.filter(lambda v: not (isinstance(v, str) and v)))
        _one_line_config_error(MetaEquals, bad, ("x",))
    elif which == "values":
        bad = data.draw(st.one_of(st.just(()), st.just([]), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)))
        _one_line_config_error(MetaEquals, "genre", bad)
    elif which == "pattern":
        bad = data.draw(st.one_of(junk.filter(lambda v: not isinstance(v, str)), st.sampled_from(["(", "[a-", "*x", "(?P<"])))
        _one_line_config_error(TextRegex, bad)
    elif which == "flags":
        bad = data.draw(st.one_of(junk.filter(lambda v: not isinstance(v, str)), st.text(min_size=1, max_size=3).filter(
            lambda s: set(s) - set("ims"))))
        _one_line_config_error(TextRegex, "x", bad)
    elif which == "of":
        _one_line_config_error(Complement, data.draw(junk))
    else:
        _one_line_config_error(AllOf, data.draw(st.one_of(junk, st.lists(junk, max_size=2))))


# ==================================================================================== study configs
name_chars = string.ascii_letters + string.digits + "_-."
study_names = st.text(alphabet=name_chars, min_size=1, max_size=16).filter(lambda s: not s.startswith("."))
model_names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12).filter(
    lambda s: any(c.isalnum() for c in s))  # at least one letter or digit
site_names = st.builds(lambda layer, hook: f"blocks.{layer}.{hook}", st.integers(0, 40), st.sampled_from(HOOKS))
revisions = st.sampled_from(["main", "step0", "step1000", "refs/pr/1", "v1.0"])
ints = lambda low: st.integers(min_value=low, max_value=10**6)  # noqa: E731
nums = lambda lo, hi: st.floats(min_value=lo, max_value=hi, allow_nan=False)  # noqa: E731


@st.composite
def model_specs(draw, name):
    spec = {"name": name}
    if draw(st.booleans()):
        spec["zoo"] = draw(st.sampled_from(preset_names()))
        spec["overrides"] = draw(st.dictionaries(st.sampled_from(["steps", "batch_size"]), ints(1), max_size=2))
    else:
        spec["path"] = draw(st.sampled_from(["EleutherAI/pythia-70m", "/models/local", "./m"]))
        spec["revision"] = draw(st.none() | revisions)
    spec["data"] = draw(st.sampled_from(["D", "D_prime"]))
    spec["checkpoints"] = draw(st.one_of(st.sampled_from(["final", "all"]),
                                         st.lists(revisions, min_size=1, max_size=3)))
    return spec


@st.composite
def study_dicts(draw):
    names = draw(st.lists(model_names, min_size=1, max_size=3, unique=True))
    subset_kind = draw(st.sampled_from(["fraction", "meta", "regex"]))
    subset = {"kind": subset_kind, "fraction": draw(nums(1e-6, 1.0)), "complement": draw(st.booleans()),
              "seed": draw(ints(0))}
    if subset_kind == "meta":
        subset.update(field=draw(st.sampled_from(["genre", "work"])), value=draw(st.text(min_size=1, max_size=6)))
    if subset_kind == "regex":
        subset["pattern"] = draw(patterns)
    return {
        "name": draw(study_names),
        "analyses": draw(st.lists(st.sampled_from(ANALYSES), min_size=1, max_size=3, unique=True)),
        "models": [draw(model_specs(n)) for n in names],
        "sites": draw(st.lists(site_names, min_size=1, max_size=3, unique=True)),
        "out_dir": draw(st.sampled_from(["runs/x", "/tmp/somewhere else", "../outside/is/fine", "runs/${name}"])),
        "corpus": {"source": draw(st.sampled_from(["shakespeare", "data/docs.jsonl", "hf:wikitext"])),
                   "max_docs": draw(st.none() | ints(1)), "planted": draw(st.booleans()),
                   "planted_docs": draw(ints(1)), "inject_after_step": draw(st.none() | ints(0)),
                   "ioi": True, "ioi_docs": draw(ints(1))},  # ioi: ioi_patching (one of ANALYSES) needs it
        "subset": subset,
        "tokenizer_vocab": draw(ints(257)),
        "harvest": {k: draw(ints(1)) for k in ("train_tokens", "context_length", "batch_size", "eval_spans",
                                               "span_chars", "max_doc_tokens")},
        "sae": {"architecture": draw(st.sampled_from(sorted(BUILTIN_OPTIONS))), "expansion": draw(ints(1)),
                "topk": {"k": draw(ints(1))}, "batchtopk": {"k": draw(ints(1))},
                "relu": {"sparsity_coeff": draw(nums(1e-6, 1e3)), "tied": draw(st.booleans())},
                "jumprelu": {"sparsity_coeff": draw(nums(1e-6, 1e3)), "decoder_norm": draw(st.sampled_from(["unit", "free"])),
                             "bandwidth": draw(nums(1e-6, 1.0)), "init_threshold": draw(nums(1e-6, 1.0))},
                "gated": {"sparsity_coeff": draw(nums(1e-6, 1e3))},
                "steps": draw(ints(1)), "batch_size": draw(ints(1)), "lr": draw(nums(1e-7, 1.0)),
                "warmup_steps": draw(ints(0)), "sparsity_warmup_steps": draw(ints(0)),
                "dead_window": draw(st.none() | ints(1)), "init_rows": draw(ints(1)),
                "shuffle_buffer": draw(st.none() | ints(1)),
                "seeds": draw(st.lists(ints(0), min_size=2, max_size=4, unique=True)),
                "expansions": sorted(draw(st.lists(st.integers(1, 64), min_size=2, max_size=4, unique=True)))},
        "match": {"thresholds": draw(st.lists(nums(0.0, 1.0), min_size=1, max_size=5)), "n_perm": draw(ints(0)),
                  "gw_max": draw(ints(8)), "corr_threshold": draw(nums(0.0, 1.0))},
        "device": draw(st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:3"])),
        "seed": draw(ints(0)),
    }


@SETTINGS
@given(d=study_dicts())
def test_valid_study_configs_round_trip(d):
    cfg = study_from_dict(d)
    assert cfg.name == d["name"] and "${name}" not in cfg.out_dir
    assert study_from_dict(cfg.to_dict()) == cfg
    assert study_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _not_int(low: int, none_ok: bool = False):
    bad_ints = st.integers(max_value=low - 1)
    others = st.one_of(st.floats(), st.text(max_size=4), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
    return st.one_of(bad_ints, others) if none_ok else st.one_of(bad_ints, others, st.none())


def _not_num(lo: float, hi: float):
    return st.one_of(st.floats().filter(lambda v: not lo <= v <= hi), st.text(max_size=4), st.none(), st.booleans(),
                     st.lists(st.floats(), max_size=2))


def _not_bool():
    return st.one_of(st.integers(), st.text(max_size=4), st.none(), st.floats())


def _not_in(choices):
    return st.one_of(st.text(max_size=8).filter(lambda s: s not in choices), st.none(), st.integers(),
                     st.lists(st.sampled_from(list(choices)), max_size=2))


def _not_name():
    return st.one_of(st.just(""), st.text(max_size=6).filter(lambda s: s and (s[0] == "." or not set(s) <= set(name_chars))),
                     st.none(), st.integers(), st.sampled_from(["../up", "a/b", "/abs", ".hidden"]))


STUDY_INVALID = {
    ("name",): _not_name(),
    ("analyses",): st.one_of(st.just([]), st.text(max_size=5), st.integers(), st.lists(_not_in(ANALYSES), min_size=1, max_size=2)),
    ("sites",): st.one_of(st.just([]), st.integers(), st.lists(st.sampled_from(
        ["blocks.x.hook_resid_post", "blocks.0.resid", "resid_post", "blocks.-1.hook_mlp_out", ""]), min_size=1, max_size=2)),
    ("models",): st.one_of(st.just([]), st.text(max_size=3), st.integers(), st.just([{"name": "m"}])),
    ("out_dir",): st.one_of(st.just(""), st.none(), st.integers(), st.just("a\x00b")),
    ("tokenizer_vocab",): _not_int(257),
    ("device",): st.one_of(_not_in(("cpu", "cuda")).filter(lambda s: not (isinstance(s, str) and s.startswith("cuda:")
                                                                            and s[5:].isdigit())), st.just("cuda:x")),
    ("seed",): _not_int(0),
    ("corpus", "source"): st.one_of(st.just(""), st.none(), st.integers()),
    ("corpus", "text_field"): st.one_of(st.just(""), st.none(), st.integers()),
    ("corpus", "max_docs"): _not_int(1, none_ok=True),
    ("corpus", "planted"): _not_bool(),
    ("corpus", "planted_docs"): _not_int(1),
    ("corpus", "inject_after_step"): _not_int(0, none_ok=True),
    ("subset", "kind"): _not_in(("fraction", "meta", "regex")),
    ("subset", "fraction"): st.one_of(_not_num(0.0, 1.0), st.just(0.0)),
    ("subset", "complement"): _not_bool(),
    ("subset", "seed"): _not_int(0),
    ("subset", "pattern"): st.one_of(st.none(), st.integers()),
    **{("harvest", k): _not_int(1) for k in ("train_tokens", "context_length", "batch_size", "eval_spans",
                                             "span_chars", "max_doc_tokens")},
    ("sae", "architecture"): _not_in(tuple(BUILTIN_OPTIONS)),
    **{("sae", k): _not_int(1) for k in ("expansion", "steps", "batch_size", "init_rows")},
    **{("sae", k): _not_int(0) for k in ("warmup_steps", "sparsity_warmup_steps")},
    **{("sae", k): _not_int(1, none_ok=True) for k in ("dead_window", "shuffle_buffer")},
    ("sae", "topk", "k"): _not_int(1),
    ("sae", "batchtopk", "k"): _not_int(1),
    ("sae", "relu", "k"): st.integers(1, 8),  # a field relu does not have
    ("sae", "k"): st.integers(1, 8),  # an option written flat, outside its block
    ("sae", "lr"): _not_num(1e-7, 1.0),
    **{("sae", a, "sparsity_coeff"): _not_num(0.0, math.inf) | st.just(0.0)
       for a in ("relu", "jumprelu", "gated")},
    ("sae", "relu", "tied"): _not_bool(),
    ("sae", "jumprelu", "bandwidth"): _not_num(0.0, math.inf) | st.just(0.0),  # > 0, however small
    ("sae", "seeds"): st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(0, 5), max_size=1),
                                st.just([1, 1]), st.just([0, -1]), st.just([0, 1.5]), st.just([True, 0])),
    ("sae", "expansions"): st.one_of(st.integers(), st.text(max_size=3), st.just([4, 2]), st.just([2, 2]),
                                     st.just([0, 2]), st.just([1.5, 2]), st.just([True, 2])),
    ("match", "thresholds"): st.one_of(st.just([]), st.integers(), st.text(max_size=3),
                                       st.lists(_not_num(0.0, 1.0), min_size=1, max_size=2)),
    ("match", "n_perm"): _not_int(0),
    ("match", "gw_max"): _not_int(8),
    ("match", "corr_threshold"): _not_num(0.0, 1.0),
    ("models", 0, "name"): st.one_of(st.just(""), st.none(), st.integers(), st.sampled_from(["../m", "a b", "m/1", "é"])),
    ("models", 0, "zoo"): st.one_of(st.just(""), st.integers(), st.sampled_from(["nope", "../x", "missing.yaml"])),
    ("models", 0, "data"): _not_in(("D", "D_prime")),
    ("models", 0, "revision"): st.one_of(st.just(""), st.integers(), st.sampled_from(["../x", "/abs", "a//b", "a\\b", "."])),
    ("models", 0, "checkpoints"): st.one_of(st.just([]), st.none(), st.integers(), st.just("latest"),
                                           st.lists(st.sampled_from(["..", "/etc", "a/../../b"]), min_size=1, max_size=2),
                                           st.just([1, 2])),
    ("models", 0, "overrides"): st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
                                         st.just({"name": "../x"})),
}

VALID_STUDY = {"name": "s", "analyses": ["layer_flow"], "models": [{"name": "m", "zoo": "tiny_gpt2"}],
               "sites": ["blocks.0.hook_resid_post"], "subset": {"kind": "regex", "pattern": "x"}}


def _with(base: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(base))
    node = out
    for key in path[:-1]:
        if isinstance(key, str) and key not in node:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("path", list(STUDY_INVALID), ids=lambda p: ".".join(map(str, p)))
@FEW
@given(data=st.data())
def test_invalid_study_values_raise_one_line_config_error(path, data):
    value = data.draw(STUDY_INVALID[path])
    base = VALID_STUDY if path != ("subset", "fraction") else {**VALID_STUDY, "subset": {"kind": "fraction"}}
    _one_line_config_error(study_from_dict, _with(base, path, value))


@SETTINGS
@given(value=junk)
def test_a_study_that_is_not_a_mapping_is_a_config_error(value):
    if isinstance(value, dict):
        value = [value]
    _one_line_config_error(study_from_dict, value)


# ==================================================================================== SAE and train configs
@st.composite
def sae_dicts(draw):
    arch = draw(st.sampled_from(sorted(BUILTIN_OPTIONS)))
    d_sae = draw(st.integers(1, 4096))
    out = {"architecture": arch, "d_in": draw(st.integers(1, 4096)), "d_sae": d_sae,
           "dtype": draw(st.sampled_from(["float32", "float64", "bfloat16", "float16"]))}
    if arch in ("topk", "batchtopk"):
        out["k"] = draw(st.integers(1, d_sae))
        return out
    out["sparsity_coeff"] = draw(nums(1e-6, 10.0))
    out["decoder_norm"] = draw(st.sampled_from(["unit", "free"]))
    if arch == "jumprelu":
        out.update(bandwidth=draw(nums(1e-6, 1.0)), init_threshold=draw(nums(1e-6, 1.0)))
    if arch == "relu":
        out["tied"] = draw(st.booleans())
        if out["tied"]:
            out["decoder_norm"] = "unit"  # a tied encoder is the decoder's transpose: rows stay unit
    return out


@SETTINGS
@given(d=sae_dicts(), data=st.data())
def test_valid_sae_and_train_configs_round_trip(d, data):
    sae = SAEConfig.from_dict(d)
    assert SAEConfig.from_dict(sae.to_dict()) == sae
    assert SAEConfig.from_dict(json.loads(json.dumps(sae.to_dict()))) == sae
    train = TrainConfig(sae=sae, site=data.draw(site_names), seed=data.draw(st.integers(0, 2**31)),
                        lr=data.draw(nums(1e-7, 1.0).filter(lambda v: v > 0)), warmup_steps=data.draw(ints(0)),
                        decay_start=data.draw(nums(0.0, 1.0)), remedy=data.draw(st.sampled_from(REMEDIES)),
                        aux_coeff=data.draw(nums(0.0, 1.0)), aux_k=data.draw(st.none() | ints(1)))
    assert TrainConfig.from_dict(train.to_dict()) == train
    assert TrainConfig.from_dict(json.loads(json.dumps(train.to_dict()))) == train


VALID_SAE = {"architecture": "relu", "d_in": 8, "d_sae": 16, "sparsity_coeff": 1.0}
SAE_INVALID = {
    "architecture": _not_in(tuple(BUILTIN_OPTIONS)).filter(lambda v: v not in architectures()),
    "d_in": _not_int(1),
    "d_sae": _not_int(1),
    "dtype": _not_in(("float32", "float64", "bfloat16", "float16")),
    "decoder_norm": _not_in(("unit", "free")),
    "sparsity_coeff": _not_num(0.0, math.inf).filter(lambda v: v != math.inf),
    "tied": _not_bool(),
    "k": st.integers(1, 8),  # relu has no k
}
TRAIN_INVALID = {
    "lr": _not_num(0.0, math.inf) | st.just(0.0),  # lr > 0, any finite size
    "seed": _not_int(0),
    "warmup_steps": _not_int(0),
    "sparsity_warmup_steps": _not_int(0),
    "decay_start": _not_num(0.0, 1.0),
    "remedy": _not_in(REMEDIES),
    "aux_coeff": _not_num(0.0, math.inf),  # >= 0, any finite size
    "aux_k": _not_int(1, none_ok=True),
    "site": st.one_of(st.just(""), st.none(), st.integers()),
    "name": st.one_of(st.just(""), st.integers(), st.lists(st.text(max_size=2), max_size=2)),
}
# Gaps found by these properties in files owned elsewhere (universality/sae/config.py,
# universality/train/config.py): a wrong type reaches a comparison and raises TypeError, or a
# NaN/Inf/negative/non-integer value is accepted. strict=True: the marker goes once they are fixed.
_KNOWN_SAE_GAPS: set[str] = set()
_KNOWN_TRAIN_GAPS: set[str] = set()


# one value per known gap, tried before hypothesis draws, so the xfail above is deterministic
_GAP_EXAMPLES = {
    "SAEConfig": {"architecture": ["topk"], "sparsity_coeff": "x", "jumprelu_bandwidth": None,
                  "jumprelu_threshold": math.nan, "tied": "yes"},
    "TrainConfig": {"lr": "x", "seed": -1, "warmup_steps": None, "sparsity_warmup_steps": 1.5, "decay_start": "a",
                    "aux_coeff": None, "aux_k": "3", "name": 5},
}


def _gap(field: str, known: set[str], owner: str):
    return pytest.mark.xfail(field in known, strict=True,
                             reason=f"{owner}.{field}: wrong types raise TypeError or bad values are accepted")


@pytest.mark.parametrize("field", [pytest.param(f, marks=_gap(f, _KNOWN_SAE_GAPS, "SAEConfig")) for f in SAE_INVALID])
@FEW
@given(data=st.data())
def test_invalid_sae_config_values_raise_one_line_config_error(field, data):
    if field in _GAP_EXAMPLES["SAEConfig"]:
        _one_line_config_error(SAEConfig.from_dict, {**VALID_SAE, field: _GAP_EXAMPLES["SAEConfig"][field]})
    _one_line_config_error(SAEConfig.from_dict, {**VALID_SAE, field: data.draw(SAE_INVALID[field])})


@pytest.mark.parametrize("field", [pytest.param(f, marks=_gap(f, _KNOWN_TRAIN_GAPS, "TrainConfig")) for f in TRAIN_INVALID])
@FEW
@given(data=st.data())
def test_invalid_train_config_values_raise_one_line_config_error(field, data):
    sae = SAEConfig.from_dict(VALID_SAE)
    if field in _GAP_EXAMPLES["TrainConfig"]:
        _one_line_config_error(TrainConfig, sae=sae, **{field: _GAP_EXAMPLES["TrainConfig"][field]})
    _one_line_config_error(TrainConfig, sae=sae, **{field: data.draw(TRAIN_INVALID[field])})
