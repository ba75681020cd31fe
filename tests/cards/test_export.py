"""The Neuronpedia / SAEDashboard export of feature cards (universality.cards.export).

The round trip goes through the viewer's own reader: SAEDashboard's
``sae_dashboard/neuronpedia/neuronpedia_dashboard.py`` (``NeuronpediaDashboardBatch(**json)``, the
class its runner builds these files with and its acceptance tests read them back with; it rejects
unknown fields at every level). (SAEDashboard's later ``neuronpedia_export.py``, batch files ->
Neuronpedia's rows, is not in any PyPI release; it was checked by hand against these files.) The
reader is loaded from, in order:

* ``$UNIVERSALITY_SAE_DASHBOARD``: a ``sae_dashboard-*.whl`` or a source checkout of SAEDashboard;
* an installed ``sae_dashboard`` package;
* ``<repo>/.whl/sae_dashboard-*.whl`` (``pip download --no-deps sae-dashboard -d .whl``).

Only that module is loaded (by file; they need numpy, and orjson, stubbed with ``json``
when absent), never the package's heavy dependencies. Without any of them the reader tests skip and
the format checks below still run. Everything is offline and takes well under a second.
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import json
import math
import os
import random
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from universality.cards import export as export_mod
from universality.cards.card import CardSet, Context, FeatureCard, QuantileBand
from universality.cards.export import SKIPPED_FILE, export_neuronpedia
from universality.errors import ArtifactError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
NP = "sae_dashboard/neuronpedia/"

# ---------------------------------------------------------------------------------------------
# cards built by hand


def _context(rng: random.Random, width: int, peak: float, row: int) -> Context:
    vocab = [" the", " cat", "é", "\n", '"', "<|endoftext|>", " Brigade", "âĢ", "Ļ", " 🙂", "\\", ""]
    tokens = tuple(rng.choice(vocab) for _ in range(width))
    focus = rng.randrange(width)
    values = [0.0 if rng.random() < 0.6 else round(rng.uniform(0.0, peak * 0.9), 6) for _ in range(width)]
    values[focus] = peak
    return Context(tokens=tokens, values=tuple(values), focus=focus, row=row, value=peak)


def make_card(latent: int, seed: int = 0, dead: bool = False) -> FeatureCard:
    rng = random.Random(seed * 1000 + latent)
    if dead:
        return FeatureCard(latent=latent, fires=0, n_tokens=5000, density=0.0, max_value=0.0,
                           mean_value=float("nan"), top=(), bands=(), hist_edges=(), hist_counts=(),
                           token_identity=float("nan"))
    mx = rng.uniform(1.0, 20.0)
    width = rng.randrange(3, 12)
    top = tuple(_context(rng, width, mx * (1 - 0.05 * i), 100 * latent + i) for i in range(4))
    bands = tuple(
        QuantileBand(lo=lo, hi=lo + 0.25, share=share,
                     examples=tuple(_context(rng, width, mx * (lo + 0.1), 7 * i) for i in range(2)))
        for lo, share in ((0.0, 0.6), (0.25, 0.3), (0.5, 0.1)))
    nb = rng.randrange(1, 6)
    edges = tuple(mx * 10 ** (-3 + 3 * i / nb) for i in range(nb + 1))
    counts = tuple(rng.randrange(0, 50) for _ in range(nb))
    fires = sum(counts) or 1
    return FeatureCard(
        latent=latent, fires=fires, n_tokens=5000, density=fires / 5000, max_value=mx, mean_value=mx / 3,
        top=top, bands=bands, hist_edges=edges, hist_counts=counts, token_identity=0.4,
        top_tokens=((" cat", 0.5),), promoted=((" Brigade", 3.75), (" brig", 2.5)),
        suppressed=(("ogen", -0.7), ('"', -0.6)), tags=("x",))


def make_cards(latents, seed: int = 0, dead=(), site: str = "blocks.6.hook_resid_post") -> CardSet:
    cards = tuple(make_card(i, seed, dead=i in dead) for i in latents)
    return CardSet(a={"path": "/sae", "model": "gpt2", "site": site, "width": 4096},
                   text={"path": "/store", "n_tokens": 5000}, cards_a=cards, meta={"k": 4})


def _batches(folder: Path) -> list[dict]:
    files = sorted(folder.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    return [json.loads(p.read_text(encoding="utf-8")) for p in files]


def _examples(card: FeatureCard):
    """(context, bin_min, bin_max, bin_contains) in the order the export writes them."""
    out = [(c, -1.0, card.max_value, -1.0) for c in card.top]
    for b in card.bands:
        out += [(c, b.lo, b.hi, b.share) for c in b.examples]
    return out


# ---------------------------------------------------------------------------------------------
# the viewer's own reader


def _sae_dashboard_source() -> tuple[str, Path] | None:
    env = os.environ.get("UNIVERSALITY_SAE_DASHBOARD")
    if env:
        p = Path(env)
        return ("wheel", p) if p.suffix == ".whl" else ("dir", p)
    spec = importlib.util.find_spec("sae_dashboard")
    if spec is not None and spec.submodule_search_locations:
        return "dir", Path(next(iter(spec.submodule_search_locations))).parent
    wheels = sorted((ROOT / ".whl").glob("sae_dashboard-*.whl"))
    return ("wheel", wheels[-1]) if wheels else None


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    stubbed = False
    try:
        import orjson  # noqa: F401
    except ImportError:  # neuronpedia_export needs only orjson.loads / orjson.dumps(-> bytes)
        stub = types.ModuleType("orjson")
        stub.loads = json.loads
        stub.dumps = lambda o: json.dumps(o, default=lambda x: x.isoformat()).encode()
        sys.modules["orjson"], stubbed = stub, True
    try:
        spec.loader.exec_module(mod)
    finally:
        if stubbed:
            del sys.modules["orjson"]
    return mod


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    """``types.SimpleNamespace(dashboard=<neuronpedia_dashboard>, origin=...)``."""
    found = _sae_dashboard_source()
    if found is None:
        pytest.skip("SAEDashboard's reader is not available: pip download --no-deps sae-dashboard -d .whl "
                    "(or set UNIVERSALITY_SAE_DASHBOARD to a wheel or a checkout)")
    kind, where = found
    folder = tmp_path_factory.mktemp("sae_dashboard")
    mods = {}
    for stem in ("neuronpedia_dashboard",):
        member = f"{NP}{stem}.py"
        if kind == "wheel":
            with zipfile.ZipFile(where) as zf:
                if member not in zf.namelist():
                    continue
                (folder / f"{stem}.py").write_bytes(zf.read(member))
            mods[stem] = _load(f"_sd_{stem}", folder / f"{stem}.py")
        elif (where / member).is_file():
            mods[stem] = _load(f"_sd_{stem}", where / member)
    if "neuronpedia_dashboard" not in mods:
        pytest.skip(f"{where} has no {NP}neuronpedia_dashboard.py")
    return types.SimpleNamespace(dashboard=mods["neuronpedia_dashboard"], origin=str(where))


def _fields(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def test_every_field_of_the_reader_is_written_and_no_other(reader, tmp_path):
    d = reader.dashboard
    export_neuronpedia(make_cards(range(3)), tmp_path / "np", "gpt2-small", "res-test")
    (batch,) = _batches(tmp_path / "np")
    dfa = {"dfa_values", "dfa_maxValue", "dfa_targetIndex"}  # optional there; the runner leaves them out without DFA
    assert set(batch) == _fields(d.NeuronpediaDashboardBatch)
    for f in batch["features"]:
        assert set(f) == _fields(d.NeuronpediaDashboardFeature)
        for a in f["activations"]:
            assert set(a) == _fields(d.NeuronpediaDashboardActivation) - dfa


def test_round_trip_through_sae_dashboard_reader(reader, tmp_path):
    cards = make_cards([5, 0, 17, 3, 9, 11, 2], seed=1)
    paths = export_neuronpedia(cards, tmp_path / "np", "gpt2-small", "res-test", batch_size=3)
    assert len(paths) == 3
    seen = []
    for path in paths:
        raw = json.loads(path.read_text(encoding="utf-8"))
        batch = reader.dashboard.NeuronpediaDashboardBatch(**raw)  # TypeError on any unknown field
        # nothing lost or renamed: the reader's own serialisation gives back the file
        assert json.loads(json.dumps(batch.to_dict())) == raw
        assert (batch.model_id, batch.layer, batch.sae_set, batch.sae_id_suffix) == ("gpt2-small", 6, "res-test", None)
        for feat in batch.features:
            card = cards.card(feat.feature_index)
            seen.append(feat.feature_index)
            assert feat.frac_nonzero == card.density
            assert feat.pos_str == [t for t, _ in card.promoted] and feat.pos_values == [v for _, v in card.promoted]
            assert feat.neg_str == [t for t, _ in card.suppressed]
            assert feat.neg_values == [v for _, v in card.suppressed]
            assert feat.freq_hist_data_bar_heights == list(card.hist_counts)
            e = card.hist_edges
            assert feat.freq_hist_data_bar_values == pytest.approx([(e[i] + e[i + 1]) / 2 for i in range(len(e) - 1)])
            want = _examples(card)
            assert len(feat.activations) == len(want)
            for act, (ctx, lo, hi, share) in zip(feat.activations, want):
                assert act.tokens == list(ctx.tokens)
                assert act.values == list(ctx.values)
                assert act.qualifying_token_index == ctx.focus
                assert act.values[act.qualifying_token_index] == ctx.value
                assert (act.bin_min, act.bin_max, act.bin_contains) == pytest.approx((lo, hi, share))
            # the top group carries SAEDashboard's markers and the card's maximum
            assert [a.bin_min for a in feat.activations[:len(card.top)]] == [-1.0] * len(card.top)
            assert max(max(a.values) for a in feat.activations) == card.max_value
    assert seen == sorted(c.latent for c in cards.cards_a)


def test_batching_and_layout(tmp_path):
    cards = make_cards([9, 1, 4, 7, 0, 2, 8], dead={4})
    paths = export_neuronpedia(cards, tmp_path / "np", "gpt2-small", "res-test", batch_size=2)
    assert [p.name for p in paths] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    assert all(p.is_file() for p in paths)
    batches = _batches(tmp_path / "np")
    assert [[f["feature_index"] for f in b["features"]] for b in batches] == [[0, 1], [2, 7], [8, 9]]
    assert {b["layer"] for b in batches} == {6} and {b["sae_set"] for b in batches} == {"res-test"}
    skipped = json.loads((tmp_path / "np" / SKIPPED_FILE).read_text())
    assert skipped == {"model_id": "gpt2-small", "layer": "6", "sae_set": "res-test", "skipped_indexes": [4]}
    prov = json.loads((tmp_path / "np" / export_mod.PROVENANCE_FILE).read_text())
    assert prov["format"] == export_mod.EXPORT_FORMAT and prov["batches"] == [p.name for p in paths]
    assert prov["dictionary"]["site"] == "blocks.6.hook_resid_post" and prov["n_features"] == 6
    assert sorted(os.listdir(tmp_path)) == ["np"]  # no temporaries left beside it
    # one file when everything fits; strict JSON (no NaN) in every batch file
    export_neuronpedia(cards, tmp_path / "np1", "gpt2-small", "res-test")
    (only,) = _batches(tmp_path / "np1")
    assert len(only["features"]) == 6
    json.loads((tmp_path / "np1" / "batch-0.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_values_preserved_exactly(tmp_path):
    cards = make_cards([3], seed=5)
    export_neuronpedia(cards, tmp_path / "np", "m", "s", layer=2)
    (batch,) = _batches(tmp_path / "np")
    assert batch["layer"] == 2
    (f,) = batch["features"]
    card = cards.cards_a[0]
    assert f["frac_nonzero"] == card.density
    assert f["activations"][0]["bin_max"] == card.max_value
    for a, (ctx, *_rest) in zip(f["activations"], _examples(card)):
        assert a["tokens"] == list(ctx.tokens) and a["values"] == list(ctx.values)  # bit-exact floats, any unicode


def test_existing_folder_needs_overwrite(tmp_path):
    out = tmp_path / "np"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ConfigError, match="not empty.*overwrite=True"):
        export_neuronpedia(make_cards([0]), out, "m", "s")
    assert (out / "keep.txt").read_text() == "old"
    export_neuronpedia(make_cards([0]), out, "m", "s", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["batch-0.json", SKIPPED_FILE, export_mod.PROVENANCE_FILE]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_neuronpedia(make_cards([0]), empty, "m", "s") == [empty / "batch-0.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        export_neuronpedia(make_cards([0]), tmp_path / "file", "m", "s", overwrite=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"model_id": ""}, "model_id"),
    ({"sae_id": "a/b"}, "sae_id"),
    ({"side": "c"}, "side"),
    ({"side": "b"}, "no single cards"),
    ({"layer": -1}, "layer"),
    ({"n_prompts_total": -3}, "n_prompts_total"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"model_id": "m", "sae_id": "s", **kwargs}
    with pytest.raises(ConfigError, match=match) as err:
        export_neuronpedia(make_cards([0, 1]), tmp_path / "np", **args)
    assert "\n" not in str(err.value) and "; " in str(err.value)
    assert not (tmp_path / "np").exists()


def test_layer_from_site_or_argument(tmp_path):
    cards = make_cards([0], site="not-a-site")
    with pytest.raises(ConfigError, match="pass layer="):
        export_neuronpedia(cards, tmp_path / "np", "m", "s")
    export_neuronpedia(cards, tmp_path / "np", "m", "s", layer=0)
    assert _batches(tmp_path / "np")[0]["layer"] == 0


@pytest.mark.parametrize("breakage, match", [
    (lambda c: replace(c, top=(replace(c.top[0], values=c.top[0].values[:-1]),) + c.top[1:]), "tokens but"),
    (lambda c: replace(c, top=(replace(c.top[0], focus=99),) + c.top[1:]), "focus 99"),
    (lambda c: replace(c, top=(replace(c.top[0], values=(math.nan,) * len(c.top[0].tokens)),)), "not finite"),
    (lambda c: replace(c, density=1.5), "density"),
    (lambda c: replace(c, hist_edges=c.hist_edges[:-1]), "histogram edges"),
])
def test_bad_card_writes_nothing(tmp_path, breakage, match):
    good = make_cards(range(6))
    bad = replace(good, cards_a=good.cards_a[:5] + (breakage(good.cards_a[5]),))
    with pytest.raises(ArtifactError, match=match):
        export_neuronpedia(bad, tmp_path / "np", "m", "s", batch_size=2)
    assert os.listdir(tmp_path) == []


def test_duplicate_latent(tmp_path):
    cards = make_cards([0, 1])
    with pytest.raises(ArtifactError, match="two cards for latent 1"):
        export_neuronpedia(replace(cards, cards_a=cards.cards_a + cards.cards_a[1:]), tmp_path / "np", "m", "s")


def test_failure_while_writing_leaves_no_partial_output(tmp_path, monkeypatch):
    real = export_mod.atomic_write_text
    calls = []

    def flaky(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, text)

    monkeypatch.setattr(export_mod, "atomic_write_text", flaky)
    with pytest.raises(OSError, match="disk full"):
        export_neuronpedia(make_cards(range(6)), tmp_path / "np", "m", "s", batch_size=2)
    assert os.listdir(tmp_path) == []  # neither the folder nor a temporary
    old = tmp_path / "old"
    export_neuronpedia(make_cards([0]), old, "m", "s", batch_size=2)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        export_neuronpedia(make_cards(range(6)), old, "m", "s", batch_size=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before  # the previous export is untouched
    assert os.listdir(tmp_path) == ["old"]
