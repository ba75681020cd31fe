"""Sites travel typed: ``Site`` properties instead of suffix tests, one conversion at the edge, the
same tensors for names and ``Site`` objects, no string parsing in the capture path (checked at run
time and statically), and a missing site's error that lists the model's sites."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import models
from models.testing import make_tiny_model
from universality.activations import ActivationStore, check_sites, harvest
from universality.data import PackingConfig
from universality.errors import ArtifactError, ConfigError, UnknownSiteError
from universality.io import read_json, write_json
from universality.sites import (
    HOOKS,
    INTEGER_HOOKS,
    RESIDUAL_HOOKS,
    ROUTING_HOOKS,
    Site,
    as_site,
    as_sites,
    describe_sites,
    parse_sites,
    require_sites,
    site,
)

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "Sparse autoencoders find features. " * 8]


def _ids(batch: int = 2, pos: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 250, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("typed_sites")
    cache: dict[str, models.ModelAdapter] = {}

    def get(family: str, **overrides) -> models.ModelAdapter:
        key = family + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
        if key not in cache:
            cache[key] = models.load(str(make_tiny_model(family, root / key, seed=1, **overrides)), device="cpu")
        return cache[key]

    return get


# ------------------------------------------------------------------------------------ Site itself
@pytest.mark.parametrize("hook", HOOKS)
def test_site_properties_follow_the_hook(hook):
    s = Site.parse(f"blocks.3.{hook}")
    assert s.is_routing == (hook in ROUTING_HOOKS)
    assert s.is_integer == (hook in INTEGER_HOOKS) == (hook == "mlp.hook_expert_indices")
    assert s.kind == ("int" if s.is_integer else "float")
    assert s.is_residual == (hook in RESIDUAL_HOOKS) == hook.startswith("hook_resid_")
    assert site(3, s.short) == s and s.short == hook.removeprefix("mlp.").removeprefix("hook_")
    assert s.name == str(s) == f"blocks.3.{hook}" and s.name is s.name  # formatted once


def test_as_site_and_as_sites_convert_once_and_pass_sites_through():
    s = site(1, "resid_post")
    assert as_site(s) is s and as_site("blocks.1.hook_resid_post") == s
    mixed = as_sites(["blocks.1.hook_resid_post", site(0, "mlp_out"), s, "blocks.0.hook_mlp_out"])
    assert mixed == (site(0, "mlp_out"), s)  # sorted in forward order, de-duplicated
    assert as_sites(n for n in ["blocks.2.hook_resid_pre"]) == (site(2, "resid_pre"),)  # any iterable
    assert as_sites({"blocks.0.hook_attn_out": 1}) == (site(0, "attn_out"),)  # e.g. a dict's keys
    assert as_sites(s) == (s,) and parse_sites is as_sites
    with pytest.raises(UnknownSiteError, match="no sites"):
        as_sites(())
    with pytest.raises(UnknownSiteError, match="list of names"):
        as_sites(3)  # type: ignore[arg-type]


def test_describe_and_require_sites_list_every_site_on_one_line():
    few = [site(l, h) for l in range(2) for h in ("resid_pre", "resid_post")]
    assert describe_sites(few) == ", ".join(s.name for s in sorted(few))
    many = [site(l, h) for l in range(32) for h in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    many += [site(l, "router_logits") for l in (0, 1, 2, 5, 7, 8)] + [site(9, "expert_indices")]
    text = describe_sites(many)
    assert text == ("blocks.{0-31}.hook_resid_pre, blocks.{0-31}.hook_attn_out, blocks.{0-2,5,7-8}.mlp.hook_router_logits, "
                    "blocks.9.mlp.hook_expert_indices, blocks.{0-31}.hook_mlp_out, blocks.{0-31}.hook_resid_post (135 sites)")
    with pytest.raises(UnknownSiteError) as err:
        require_sites([site(40, "resid_post"), site(0, "resid_pre")], set(many), "model 'm'")
    msg = str(err.value)
    assert "\n" not in msg and msg.count(";") == 1 and "has no site 'blocks.40.hook_resid_post'" in msg and text in msg
    require_sites([site(0, "resid_pre")], set(many), "model 'm'")  # present: no error


# --------------------------------------------------------------------------- capture and forward
@pytest.mark.parametrize("family", ["gpt2", "olmoe", "mamba"])
def test_capture_with_sites_and_with_names_is_identical(tiny_models, family):
    a = tiny_models(family)
    names = list(a.sites)
    typed = [as_site(n) for n in names]
    assert dict(a.site_table) == {s: a.sites[s.name] for s in typed}  # the typed table matches the public one
    by_name = a.capture(_ids(), names)
    by_site = a.capture(_ids(), typed)
    mixed = a.capture(_ids(), [names[0], *typed[1:]])
    assert list(by_name) == list(by_site) == list(mixed) == [s.name for s in sorted(typed)]  # str keys: data out
    for n in names:
        assert torch.equal(by_name[n], by_site[n]) and torch.equal(by_name[n], mixed[n])
        assert by_name[n].dtype == (torch.int64 if as_site(n).is_integer else a.dtype)
    one = a.capture(_ids(), typed[0])
    assert torch.equal(one[names[0]], by_name[names[0]])


def test_forward_replace_accepts_sites(tiny_models):
    a = tiny_models("gpt2")
    s = site(0, "resid_post")

    def half(x):
        return x * 0.5

    by_name = a.forward(_ids(), replace={s.name: half})
    by_site = a.forward(_ids(), replace={s: half})
    assert torch.equal(by_name, by_site) and not torch.equal(by_site, a.forward(_ids()))
    with pytest.raises(ConfigError, match="twice"):
        a.forward(_ids(), replace={s: half, s.name: half})


def test_capture_path_parses_no_string(tiny_models, monkeypatch):
    """With ``Site`` objects nothing is parsed; with names, each is parsed once, at the entry."""
    a = tiny_models("olmoe")
    typed = list(a.site_table)
    parsed: list[str] = []
    original = Site.parse.__func__

    def spy(cls, name):
        if isinstance(name, str):
            parsed.append(name)
        return original(cls, name)

    monkeypatch.setattr(Site, "parse", classmethod(spy))
    a.capture(_ids(), typed)
    a.forward(_ids(), replace={typed[0]: lambda x: x})
    assert parsed == []
    a.capture(_ids(), [s.name for s in typed])
    assert sorted(parsed) == sorted(s.name for s in typed)


# ---------------------------------------------------------------------------- missing sites
def test_missing_site_error_lists_the_models_sites(tiny_models):
    small = tiny_models("gpt_neox")  # 2 layers x 4 hooks: every name is listed
    with pytest.raises(UnknownSiteError) as err:
        small.capture(_ids(), [site(0, "resid_mid")])
    msg = str(err.value)
    assert "\n" not in msg and "has no site 'blocks.0.hook_resid_mid'" in msg
    assert all(n in msg for n in small.sites)
    big = tiny_models("gpt2", n_layer=4)  # 4 layers x 5 hooks: listed per hook with its layers
    with pytest.raises(UnknownSiteError) as err:
        big.capture(_ids(), ["blocks.4.hook_resid_post"])
    assert describe_sites(big.site_table) in str(err.value)
    assert "blocks.{0-3}.hook_resid_pre" in str(err.value) and "(20 sites)" in str(err.value)
    with pytest.raises(UnknownSiteError) as err:  # the harvest's check gives the same message
        check_sites(big, ["blocks.4.hook_resid_post"])
    assert describe_sites(big.site_table) in str(err.value)
    with pytest.raises(UnknownSiteError, match="model 'x' has no sites"):
        require_sites([site(0, "resid_pre"), site(1, "resid_pre")], set(), "model 'x'")


# -------------------------------------------------------------------------------- the store
def test_store_parses_manifest_sites_once_and_keeps_names_on_disk(tiny_models, tmp_path):
    a = tiny_models("olmoe")
    wanted = [site(0, "resid_post"), site(1, "expert_indices")]
    store = harvest(a, TEXTS, wanted, tmp_path / "s", packing=PackingConfig(context_len=16), batch_size=2,
                    progress=False)
    manifest = read_json(tmp_path / "s" / "manifest.json")
    assert list(manifest["sites"]) == [s.name for s in wanted]  # the on-disk format: names
    assert manifest["sites"][wanted[1].name]["kind"] == "int" and manifest["sites"][wanted[1].name]["dtype"] == "int64"
    assert manifest["sites"][wanted[0].name]["kind"] == "float"
    assert store.typed_sites == tuple(wanted) and store.sites == [s.name for s in wanted]
    by_site = next(iter(store.iter_batches(wanted, batch_size=64)))
    by_name = next(iter(store.iter_batches([s.name for s in wanted], batch_size=64)))
    assert list(by_site) == list(by_name) == [s.name for s in wanted]
    assert all(torch.equal(by_site[k], by_name[k]) for k in by_site)
    assert store.width(wanted[1]) == store.width(wanted[1].name) == a.sites[wanted[1].name]
    assert torch.equal(store.rows(("token_ids",), wanted)[wanted[0].name], store.rows(sites=[wanted[0].name])[wanted[0].name])
    manifest["sites"]["blocks.0.resid"] = manifest["sites"].pop(wanted[0].name)
    write_json(tmp_path / "s" / "manifest.json", manifest)
    with pytest.raises(ArtifactError, match="bad site"):
        ActivationStore.open(tmp_path / "s")


# ------------------------------------------------------------------------------- static check
_SHORT_HOOKS = {h.removeprefix("mlp.").removeprefix("hook_") for h in HOOKS}
# a string literal that names (part of) a site: a hook or site name, a short hook name, or a word of one
_SITE_WORDS = _SHORT_HOOKS | {"resid", "router", "expert", "mlp", "attn", "mixer"}
_PARSERS = {"parse", "parse_sites", "as_site", "as_sites"}
_STRING_TESTS = {"endswith", "startswith", "removesuffix", "removeprefix"}
# the capture path: hooks, and what runs per batch once sites are typed
_HOT = {
    "models/base.py": {"capture", "forward", "_register_replacement", "run_capture", "collect", "checked_replacement",
                       "_capture_input_hook", "_capture_output_hook", "_replace_input_hook", "_replace_output_hook"},
    "models/tlens.py": {"capture", "forward"},
    "universality/activations/harvest.py": {"add", "views", "write_shard", "_fill_store"},
    "universality/activations/readers.py": {"__iter__", "_emit", "_load_group"},
    "universality/activations/live.py": {"_load_group"},
}
_ENTRY_CALLS = {"_resolve_sites", "replacement_table"}  # the one conversion of capture / forward


def _scanned() -> list[Path]:
    """models/, universality/ (the study layer included) and analysis/, without the grammar itself."""
    files = [p for pkg in ("models", "universality", "analysis") for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if p != ROOT / "universality" / "sites.py"]


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _site_like(text: str) -> bool:
    return "hook_" in text or "blocks." in text or text.strip("._") in _SITE_WORDS


def _call_name(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _findings(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        # 1. suffix / prefix tests of site names: name.endswith("hook_expert_indices") -> site.is_integer
        if isinstance(node, ast.Call) and _call_name(node) in _STRING_TESTS and isinstance(node.func, ast.Attribute):
            if any(_site_like(s) for a in node.args for s in _strings(a)):
                out.append(f"{where}: .{_call_name(node)}() with a site fragment; ask the Site (is_integer, hook, ...)")
        # 2. substring tests: "resid" in name -> site.is_residual
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) and _site_like(node.left.value):
                out.append(f"{where}: {node.left.value!r} in <name>; ask the Site")
        # 3. site names built from parts: f"blocks.{layer}.{hook}" -> site(layer, hook)
        if isinstance(node, ast.JoinedStr):
            for before, after in zip(node.values, node.values[1:]):
                if (isinstance(before, ast.Constant) and isinstance(before.value, str) and before.value.endswith("blocks.")
                        and isinstance(after, ast.FormattedValue)):
                    out.append(f"{where}: builds a site name in an f-string; use site(layer, hook)")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant) \
                and isinstance(node.left.value, str) and node.left.value.endswith("blocks."):
            out.append(f"{where}: builds a site name by concatenation; use site(layer, hook)")
    # 4. the capture path parses nothing and splits nothing
    hot = _HOT.get(rel, set())
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name in hot:
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                name = _call_name(call)
                if name in _PARSERS or name in ("split", "rsplit", "partition", "rpartition"):
                    out.append(f"{rel}:{call.lineno}: {fn.name} (capture path) calls {name}()")
    return out


def test_static_no_site_string_handling_outside_the_grammar():
    files = _scanned()
    assert any(p.name == "harvest.py" for p in files) and any(p.name == "tlens.py" for p in files)
    assert any(p.name == "pipeline.py" for p in files) and any(p.name == "layer_flow.py" for p in files)
    assert ROOT / "universality" / "sites.py" not in files
    findings = [f for p in files for f in _findings(p)]
    assert findings == [], "\n".join(findings)


def test_static_capture_entry_points_convert_once():
    """capture / forward convert through the one helper; the hot set above names real functions."""
    for rel, names in _HOT.items():
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert names <= defined, f"{rel}: {sorted(names - defined)} no longer exist; update _HOT"
    checked = 0
    for rel in ("models/base.py", "models/tlens.py"):
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not (isinstance(fn, ast.FunctionDef) and fn.name in ("capture", "forward")):
                continue
            if any(isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n) for n in fn.body):
                continue  # the interface
            calls = {_call_name(c) for c in ast.walk(fn) if isinstance(c, ast.Call)}
            assert calls & _ENTRY_CALLS, f"{rel}:{fn.lineno} {fn.name} does not convert its sites at the entry"
            checked += 1
    assert checked == 4  # HFAdapter and TLensAdapter: capture and forward


def test_static_check_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(n, layer, hook):\n"
        "    a = n.endswith('hook_expert_indices')\n"
        "    b = n.startswith(('router_logits', 'x'))\n"
        "    c = 'resid' in n\n"
        "    d = f'blocks.{layer}.{hook}'\n"
        "    e = 'blocks.' + str(layer)\n"
        "    ok = n.endswith('.safetensors') or n.startswith('shard-') or 'x' in n or 'moe_experts' in n\n"
        "    return a, b, c, d, e, ok\n"
    )
    found = _findings(bad, tmp_path)
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "5", "6"]
