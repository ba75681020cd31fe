"""Safe loading: artifacts are safetensors + JSON, torch.load only with weights_only=True, no pickle,
trust_remote_code off unless asked for, and paths from configs stay inside the output folder."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from universality.errors import ArtifactError, ConfigError, ModelLoadError

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("universality", "models", "analysis")
#: files allowed to *write* a torch pickle: only the test-model builder, so tests can exercise the reader
PICKLE_WRITERS = {"models/testing.py"}


def _sources() -> list[tuple[str, ast.AST]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            out.append((rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)))
    return out


SOURCES = _sources()


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, _dotted(node.func)


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_sources_were_found():
    names = {rel for rel, _ in SOURCES}
    assert {"universality/io.py", "models/loading.py", "universality/cli.py"} <= names


def torch_load_offenders(sources) -> list[str]:
    offenders = []
    for rel, tree in sources:
        for call, name in _calls(tree):
            if name == "torch.load":
                value = _kw(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{rel}:{call.lineno}")
    return offenders


def pickle_offenders(sources) -> list[str]:
    banned_calls = {"pickle.load", "pickle.loads", "pickle.Unpickler", "cloudpickle.load", "cloudpickle.loads",
                    "dill.load", "dill.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle",
                    "numpy.load", "np.load"}
    offenders = []
    for rel, tree in sources:
        for call, name in _calls(tree):
            if name in banned_calls and not (name in ("np.load", "numpy.load")
                                             and isinstance(_kw(call, "allow_pickle"), ast.Constant)
                                             and _kw(call, "allow_pickle").value is False):
                offenders.append(f"{rel}:{call.lineno} {name}")
            if name in ("torch.save", "pickle.dump", "pickle.dumps") and rel not in PICKLE_WRITERS:
                offenders.append(f"{rel}:{call.lineno} {name}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.split(".")[0] in ("cloudpickle", "dill", "joblib") for m in mods):
                    offenders.append(f"{rel}:{node.lineno} import {mods}")
    return offenders


def remote_code_offenders(sources) -> list[str]:
    offenders = []
    for rel, tree in sources:
        for call, _ in _calls(tree):
            value = _kw(call, "trust_remote_code")
            if isinstance(value, ast.Constant) and value.value is True:
                offenders.append(f"{rel}:{call.lineno} passes trust_remote_code=True")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                defaults += list(node.args.kw_defaults)
                for arg, default in zip(args, defaults):
                    # required (internal plumbing) or defaulting to False; any other default is an offence
                    if arg.arg == "trust_remote_code" and default is not None and not (
                            isinstance(default, ast.Constant) and default.value is False):
                        offenders.append(f"{rel}:{node.lineno} {node.name}(trust_remote_code={ast.unparse(default)})")
    return offenders


def test_library_code_loads_safely():
    assert not torch_load_offenders(SOURCES), "torch.load without weights_only=True"
    assert not pickle_offenders(SOURCES), "pickle readers/writers in library code"
    assert not remote_code_offenders(SOURCES), "trust_remote_code switched on by default"


def test_the_checks_catch_violations():
    def src(text: str):
        return [("bad.py", ast.parse(text))]

    assert torch_load_offenders(src("import torch\ntorch.load('f')\ntorch.load('g', weights_only=False)")) == \
        ["bad.py:2", "bad.py:3"]
    assert torch_load_offenders(src("import torch\ntorch.load('f', map_location='cpu', weights_only=True)")) == []
    assert len(pickle_offenders(src("import pickle, dill\npickle.loads(b'')\nnp.load('a.npy', allow_pickle=True)\n"
                                    "torch.save({}, 'x.pt')"))) == 4
    assert pickle_offenders(src("np.load('a.npy', allow_pickle=False)")) == []
    assert len(remote_code_offenders(src("def f(trust_remote_code=True): g(trust_remote_code=True)"))) == 2
    assert remote_code_offenders(src("def f(x, *, trust_remote_code=False): g(trust_remote_code=trust_remote_code)")) == []


def test_models_load_defaults_to_no_remote_code_and_checks_the_flag(tmp_path):
    import models
    from models.testing import make_tiny_model

    assert inspect.signature(models.load).parameters["trust_remote_code"].default is False
    path = make_tiny_model("gpt2", tmp_path / "m")
    adapter = models.load(str(path), device="cpu")
    assert adapter._trust_remote_code is False
    with pytest.raises(ConfigError, match="trust_remote_code must be True or False"):
        models.load(str(path), device="cpu", trust_remote_code="false")  # a truthy string must not switch it on


class _Payload:
    """Unpickling this creates ``marker``: proof that a reader executed pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from models.testing import make_tiny_model

    return make_tiny_model("gpt2", tmp_path_factory.mktemp("safe") / "model")


def test_bin_only_model_loads_weights_only_and_matches_safetensors(tiny_model, tmp_path):
    import models
    from safetensors.torch import load_file

    binary = tmp_path / "bin_model"
    shutil.copytree(tiny_model, binary)
    state = load_file(str(binary / "model.safetensors"))
    (binary / "model.safetensors").unlink()
    torch.save(state, binary / "pytorch_model.bin")  # a plain tensor dict: allowed by weights_only=True
    ids = torch.tensor([[1, 5, 9, 2]])
    ref = models.load(str(tiny_model), device="cpu").forward(ids)
    got = models.load(str(binary), device="cpu").forward(ids)
    torch.testing.assert_close(got, ref)


def test_pickled_code_in_model_weights_is_refused(tiny_model, tmp_path):
    import models
    from safetensors.torch import load_file

    evil = tmp_path / "evil_model"
    shutil.copytree(tiny_model, evil)
    state = load_file(str(evil / "model.safetensors"))
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "CODE_RAN"
    state["payload"] = _Payload(str(marker))
    torch.save(state, evil / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle holding more than tensors") as info:
        models.load(str(evil), device="cpu")
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_artifact_readers_never_unpickle(tmp_path):
    from universality.cli import describe_path
    from universality.io import load_tensors
    from universality.sae import SAE

    marker = tmp_path / "CODE_RAN"
    disguised = tmp_path / "weights.safetensors"
    torch.save({"payload": _Payload(str(marker))}, disguised)  # a pickle under a safetensors name
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_tensors(disguised)
    pickled_sae = tmp_path / "sae"
    pickled_sae.mkdir()
    (pickled_sae / "cfg.json").write_text(json.dumps({"format": "universality.sae/1", "architecture": "topk"}))
    torch.save({"W_dec": torch.zeros(2, 2), "payload": _Payload(str(marker))}, pickled_sae / "weights.pt")
    with pytest.raises(ArtifactError, match="no weights.safetensors"):
        SAE.load(pickled_sae)
    for name in ("weights.pt", "x.bin", "x.pkl", "x.ckpt"):
        target = pickled_sae / name
        if not target.exists():
            shutil.copy(pickled_sae / "weights.pt", target)
        with pytest.raises(ArtifactError, match="pickle"):
            describe_path(target)
    assert not marker.exists()


# ------------------------------------------------------------------------------ path containment
def test_inside_keeps_paths_in_the_root(tmp_path):
    from universality.study.config import inside

    root = tmp_path / "out"
    assert inside(root, "cache", "model-a") == (root / "cache" / "model-a").resolve()
    assert inside(root, "a/./b/../c") == (root / "a" / "c").resolve()
    for bad in (("..",), ("cache", "..", "..", "x"), ("/etc/passwd",), ("a/../../b",)):
        with pytest.raises(ConfigError, match="output folder|absolute"):
            inside(root, *bad)
    root.mkdir()
    (root / "link").symlink_to(tmp_path)  # a link that leads out of the root
    with pytest.raises(ConfigError, match="leaves the output folder"):
        inside(root, "link", "elsewhere")


def test_study_names_that_become_paths_cannot_escape(tmp_path):
    from universality.study.cache import StageCache
    from universality.study.config import study_from_dict

    base = {"name": "s", "analyses": ["layer_flow"], "sites": ["blocks.0.hook_resid_post"],
            "models": [{"name": "m", "zoo": "tiny_gpt2"}]}
    out = tmp_path / "anywhere" / "the user likes"
    cfg = study_from_dict({**base, "out_dir": str(out)})  # out_dir itself may be anywhere
    assert cfg.path("cache") == (out / "cache").resolve()
    cache = StageCache(cfg.out_dir)
    for m in cfg.models:
        cache_dir = cache.path_for(f"model-{m.name}", {"k": 1})
        assert cfg.path(str(cache_dir.relative_to(out))) == cache_dir.resolve()
    bad = [
        {"name": "../up"}, {"name": "/abs"}, {"name": ".hidden"}, {"name": "a/b"},
        {"models": [{"name": "../m", "zoo": "tiny_gpt2"}]},
        {"models": [{"name": "m", "zoo": "tiny_gpt2", "checkpoints": ["step0", "../../x"]}]},
        {"models": [{"name": "m", "zoo": "tiny_gpt2", "revision": "/etc"}]},
        {"models": [{"name": "m", "zoo": "../../../etc/passwd"}]},
        {"models": [{"name": "m", "zoo": "tiny_gpt2", "overrides": {"name": "../x"}}]},
    ]
    for patch in bad:
        with pytest.raises(ConfigError) as info:
            study_from_dict({**base, **patch})
        assert "\n" not in str(info.value) and "; " in str(info.value)
    hub_ref = study_from_dict({**base, "models": [{"name": "m", "path": "EleutherAI/pythia-70m", "revision": "refs/pr/1"}]})
    assert hub_ref.models[0].revision == "refs/pr/1"  # hub refs with '/' stay allowed
    with pytest.raises(ConfigError, match="leaves the output folder"):
        cfg.path("..", "elsewhere")
    assert not (tmp_path / "anywhere").exists()  # validation writes nothing


def test_validation_writes_nothing(tmp_path, monkeypatch):
    from universality.study.config import compose_study

    monkeypatch.chdir(tmp_path)
    cfg = compose_study(["study=layer_flow", f"study.out_dir={tmp_path / 'runs' / 'x'}"])
    assert cfg.name == "layer_flow" and Path(cfg.out_dir) == tmp_path / "runs" / "x"
    assert sorted(os.listdir(tmp_path)) == []
