"""A catalogue of bad inputs: each gives a one-line "problem; fix" error, a non-zero exit from the
command line, and leaves the disk untouched.

Every :class:`Case` names a library call that must raise a :class:`UniversalityError` subclass and,
where the input is reachable from a command line, the arguments of ``python -m universality.cli``
(``tool``) or ``python -m universality`` (``study``). Three tests walk the table:

- the library call raises the expected class with one line holding ``"; "`` (problem; fix);
- the command line, run in this process, returns 2 with exactly one ``error:`` line and no traceback;
- the command line, run in a subprocess (a few cases by default, the rest in the slow tier), exits
  with 2 and prints exactly one ``error:`` line and no traceback.

Each test compares a snapshot (relative path, SHA-256, mtime) of the folder that holds every input
artifact (and is the working directory of the commands) before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from universality.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    MatchError,
    ModelLoadError,
    UniversalityError,
    UnknownSiteError,
)

REPO = Path(__file__).resolve().parents[2]
SITE0 = "blocks.0.hook_resid_post"
SITE1 = "blocks.1.hook_resid_post"
BASE_STUDY = {"name": "s", "analyses": ["layer_flow"], "models": [{"name": "m", "zoo": "tiny_gpt2"}], "sites": [SITE0]}


class _OpensAFile:
    """Unpickling this creates a file: the proof that a loader ran pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@dataclass
class World:
    """Every input artifact, built once per session under ``root``."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _texts(offset: int, n: int) -> list[str]:
    return [f"the quick brown fox {i} jumps over the lazy dog, number {i * 7} of the night" for i in range(offset, offset + n)]


def _rewrite_shard(store: Path, site: str, value: float) -> None:
    """Put ``value`` (NaN/Inf) into row 0 of shard 0 and keep the manifest's checksum consistent."""
    from safetensors.torch import load_file, save_file

    from universality.io import sha256_file

    shard = store / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    tensors[f"acts/{site}"][0, 0] = value
    save_file(tensors, str(shard))
    manifest = json.loads((store / "manifest.json").read_text())
    entry = manifest["shards"][0]
    if "sha256" in entry:
        entry["sha256"] = sha256_file(shard)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    import models
    from models.testing import make_checkpoint_series, make_tiny_model
    from universality.activations import harvest
    from universality.sae import sae_config, make_sae

    root = tmp_path_factory.mktemp("bad_inputs")
    w = World(root)
    make_tiny_model("gpt2", w / "model")
    make_checkpoint_series("gpt2", w / "series", [0, 2])
    adapter = models.load(str(w / "model"), device="cpu")
    harvest(adapter, _texts(0, 12), [SITE0, SITE1], w / "store", batch_size=4, shard_rows=128, progress=False)
    harvest(adapter, _texts(3, 12), [SITE0], w / "store_other_tokens", batch_size=4, shard_rows=128, progress=False)
    shutil.copytree(w / "store", w / "store_nan")
    _rewrite_shard(w / "store_nan", SITE0, float("nan"))
    shutil.copytree(w / "store", w / "store_truncated")
    shard = w / "store_truncated" / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])

    shutil.copytree(w / "store", w / "store_escaping")
    manifest = json.loads((w / "store_escaping" / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../store/shard-00000.safetensors"  # a real file, outside this store
    (w / "store_escaping" / "manifest.json").write_text(json.dumps(manifest))

    d = adapter.d_model
    for name, seed, d_in in (("sae_a", 0, d), ("sae_b", 1, d), ("sae_wide", 2, d + 8)):
        make_sae(sae_config("topk", d_in, 32, k=4), seed=seed, meta={"model": "model", "site": SITE0}).save(w / name)
    shutil.copytree(w / "sae_a", w / "sae_truncated")
    weights = w / "sae_truncated" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.copytree(w / "sae_a", w / "sae_bad_json")
    (w / "sae_bad_json" / "cfg.json").write_text('{"format": "universality.sae/1", "architec')
    shutil.copytree(w / "sae_a", w / "sae_bad_arch")
    doc = json.loads((w / "sae_bad_arch" / "cfg.json").read_text())
    doc["architecture"] = "sparsemax"
    (w / "sae_bad_arch" / "cfg.json").write_text(json.dumps(doc))
    (w / "garbage.safetensors").write_bytes(b"\xff" * 64)

    (w / "bert_model").mkdir()
    (w / "bert_model" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    torch.save({"W": torch.zeros(2)}, w / "weights.bin")
    shutil.copytree(w / "model", w / "model_pickle")
    from safetensors.torch import load_file

    state = load_file(str(w / "model_pickle" / "model.safetensors"))
    (w / "model_pickle" / "model.safetensors").unlink()
    state["payload"] = _OpensAFile(str(root / "PICKLE_RAN"))
    torch.save(state, w / "model_pickle" / "pytorch_model.bin")

    (w / "other_study").mkdir()
    (w / "other_study" / "study.json").write_text(json.dumps({"study": "someone_else"}))
    (w / "notes.json").write_text(json.dumps({"mine": True}))
    (w / "empty.jsonl").write_text("\n\n")
    return w


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """``relative path -> (sha256, mtime_ns)`` of every file and folder under ``root``."""
    out: dict[str, tuple[str, int]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file():
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        else:
            out[rel] = ("dir", p.stat().st_mtime_ns)
    return out


# ---------------------------------------------------------------------------------------- library calls
def _load_model(w: World, name: str, **kw) -> None:
    import models

    models.load(str(w / name) if not name.startswith("hub:") else name[4:], device="cpu", **kw)


def _sae(w: World, name: str):
    from universality.sae import SAE

    return SAE.load(w / name)


def _rows(w: World, store: str, site: str = SITE0) -> tuple[torch.Tensor, torch.Tensor]:
    from universality.activations import ActivationStore

    r = ActivationStore.open(w / store).rows(fields=("token_ids",), sites=[site])
    return r[site].float(), r["token_ids"]


def _match(w: World, a: str, b: str, **kw) -> None:
    from universality.match import match

    match(_sae(w, a), _sae(w, b), device="cpu", **kw)


def _match_nan(w: World) -> None:
    x, t = _rows(w, "store")
    x[3, 1] = float("nan")
    _match(w, "sae_a", "sae_b", view="activations", activations=x, token_ids=t)


def _compare_inf(w: World) -> None:
    from universality.match import compare

    x, t = _rows(w, "store")
    x[0, 0] = float("inf")
    compare(_sae(w, "sae_a"), _sae(w, "sae_b"), activations=x, token_ids=t, n_perm=0)


def _match_other_tokens(w: World) -> None:
    xa, ta = _rows(w, "store")
    xb, tb = _rows(w, "store_other_tokens")
    n = min(len(ta), len(tb))  # same row count, different tokens: only the fingerprint can tell
    _match(w, "sae_a", "sae_b", view="activations", activations=(xa[:n], xb[:n]), token_ids=(ta[:n], tb[:n]))


def _match_token_count(w: World) -> None:
    x, t = _rows(w, "store")
    _match(w, "sae_a", "sae_b", view="activations", activations=x, token_ids=t[:-5])


def _missing_site(w: World) -> None:
    import models
    from universality.activations.harvest import check_sites

    check_sites(models.load(str(w / "model"), device="cpu"), ["blocks.7.hook_resid_post"])


def _select(docs, spec) -> None:
    from universality.data import select_subset

    select_subset(docs, spec)


def _empty_dataset(w: World) -> None:
    from universality.data import TextsSource

    _select(TextsSource([]), None)


def _empty_subset(w: World) -> None:
    from universality.data import TextRegex, TextsSource

    _select(TextsSource(_texts(0, 5)), TextRegex(r"\bzebra\b"))


def _study(patch: dict) -> Callable[[World], None]:
    def call(w: World) -> None:
        from universality.study.config import study_from_dict

        study_from_dict({**BASE_STUDY, **patch})

    return call


def _precheck(*overrides: str) -> Callable[[World], None]:
    def call(w: World) -> None:
        from universality.__main__ import precheck

        precheck([o.format(root=w.root) for o in overrides])

    return call


def _describe(name: str, **kw) -> Callable[[World], None]:
    def call(w: World) -> None:
        from universality.cli import describe_path

        describe_path(w / name, **kw)

    return call


def _tool(*argv: str) -> Callable[[World], None]:
    """The library side of a tool-only case: the command's own function, raising instead of exiting."""

    def call(w: World) -> None:
        from universality.cli import build_parser, run_match

        args = build_parser().parse_args([a.format(root=w.root) for a in argv])
        run_match(args)

    return call


def _inside(w: World) -> None:
    from universality.study.config import inside

    inside(w / "other_study", "cache", "..", "..", "escaped")


# ---------------------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Case:
    name: str
    error: type[UniversalityError] | None  # None: a command-line-only case (argparse usage)
    pattern: str  # regex the message must contain
    call: Callable[[World], None] | None
    cli: tuple[str, ...] = ()  # "tool ..." or "study ..." arguments; {root} is the world folder
    subprocess_default: bool = False  # also run as a subprocess in the default tier
    cli_pattern: str | None = None  # regex of the command line's message, when it differs from the library's


CASES = [
    Case("unknown_model_hub_name", ModelLoadError, r"cannot find model",
         lambda w: _load_model(w, "hub:no-such-org/no-such-model")),
    Case("missing_path", ArtifactError, r"does not exist", _describe("nope"), ("tool", "inspect", "{root}/nope"),
         subprocess_default=True),
    Case("unknown_revision_local_series", ModelLoadError, r"no revision 'step999'",
         lambda w: _load_model(w, "series", revision="step999"),
         ("tool", "inspect", "{root}/series", "--revision", "step999")),
    Case("unknown_revision_pythia", ModelLoadError, r"no published revision 'step7'",
         lambda w: _load_model(w, "hub:EleutherAI/pythia-70m", revision="step7")),
    Case("malformed_site_name", UnknownSiteError, r"malformed site name",
         lambda w: __import__("universality.sites").sites.Site.parse("blocks.x.hook_resid_post"),
         ("study", "study.sites=[blocks.x.hook_resid_post]"), subprocess_default=True),
    Case("site_the_model_lacks", UnknownSiteError, r"has no site", _missing_site,
         ("tool", "match", "{root}/sae_a", "{root}/sae_b", "--store", "{root}/store", "--view", "activations",
          "--site", "blocks.7.hook_resid_post")),
    Case("unknown_model_family", ModelLoadError, r"model_type 'bert' is not supported",
         lambda w: _load_model(w, "bert_model"), ("tool", "inspect", "{root}/bert_model")),
    Case("unknown_backend", ModelLoadError, r"unknown backend", lambda w: _load_model(w, "model", backend="jax")),
    Case("trust_remote_code_not_a_bool", ConfigError, r"trust_remote_code must be True or False",
         lambda w: _load_model(w, "model", trust_remote_code="no")),
    Case("unknown_sae_architecture_in_artifact", ConfigError, r"unknown SAE architecture 'sparsemax'",
         lambda w: _sae(w, "sae_bad_arch"), ("tool", "inspect", "{root}/sae_bad_arch")),
    Case("unknown_sae_architecture_in_study", ConfigError, r"not a registered SAE architecture",
         _study({"sae": {"architecture": "sparsemax"}}), ("study", "study.sae.architecture=sparsemax")),
    Case("weight_matcher_across_widths", MatchError, r"different widths.*view='activations'.*method='gw'",
         lambda w: _match(w, "sae_a", "sae_wide", method="hungarian"),
         ("tool", "match", "{root}/sae_a", "{root}/sae_wide"), subprocess_default=True),
    Case("store_width_differs_from_dictionary", MatchError, r"width .* d_in",
         _tool("match", "{root}/sae_a", "{root}/sae_wide", "--store", "{root}/store", "--view", "activations"),
         ("tool", "match", "{root}/sae_a", "{root}/sae_wide", "--store", "{root}/store", "--view", "activations")),
    Case("nan_activations_to_matcher", DataError, r"NaN or Inf", _match_nan,
         ("tool", "match", "{root}/sae_a", "{root}/sae_b", "--store", "{root}/store_nan", "--view", "activations")),
    Case("inf_activations_to_compare", DataError, r"NaN or Inf", _compare_inf),
    Case("nan_in_store_deep_inspect", ArtifactError, r"NaN or Inf", _describe("store_nan", deep=True),
         ("tool", "inspect", "{root}/store_nan", "--deep")),
    Case("empty_dataset", DataError, r"selects no documents", _empty_dataset),
    Case("empty_corpus_file", DataError, r"corpus file .* is empty", _precheck("study.corpus.source={root}/empty.jsonl"),
         ("study", "study.corpus.source={root}/empty.jsonl")),
    Case("missing_corpus_file", DataError, r"does not exist", _precheck("study.corpus.source={root}/gone.jsonl"),
         ("study", "study.corpus.source={root}/gone.jsonl")),
    Case("empty_subset", DataError, r"selects no documents", _empty_subset),
    Case("zero_fraction_subset", ConfigError, r"D' would be empty", _study({"subset": {"fraction": 0.0}}),
         ("study", "study.subset.fraction=0.0")),
    Case("truncated_sae_weights", ArtifactError, r"truncated|corrupt|checksum", lambda w: _sae(w, "sae_truncated"),
         ("tool", "inspect", "{root}/sae_truncated"), subprocess_default=True),
    Case("corrupt_safetensors_file", ArtifactError, r"not a readable safetensors file",
         _describe("garbage.safetensors"), ("tool", "inspect", "{root}/garbage.safetensors")),
    Case("corrupt_json_config", ArtifactError, r"not valid JSON", lambda w: _sae(w, "sae_bad_json"),
         ("tool", "inspect", "{root}/sae_bad_json")),
    Case("truncated_store_shard", ArtifactError, r"truncated|corrupt|checksum|past the end|cannot read",
         _describe("store_truncated"), ("tool", "inspect", "{root}/store_truncated")),
    Case("store_manifest_names_a_file_outside_the_store", ArtifactError, r"outside the store",
         _describe("store_escaping"), ("tool", "inspect", "{root}/store_escaping")),
    Case("store_manifest_does_not_match_request", ArtifactError, r"model='.*model', not 'EleutherAI/pythia-70m'",
         lambda w: __import__("universality.activations").activations.ActivationStore.open(
             w / "store", expect={"model": "EleutherAI/pythia-70m"}),
         ("tool", "inspect", "{root}/store", "--expect", "model=EleutherAI/pythia-70m"), subprocess_default=True),
    Case("dictionary_record_does_not_match_request", ArtifactError, r"records site=.*not 'blocks.1",
         _describe("sae_a", expect={"site": SITE1}), ("tool", "inspect", "{root}/sae_a", "--expect", f"site={SITE1}")),
    Case("wrong_config_type", ConfigError, r"sae.steps must be an integer", _study({"sae": {"steps": "many"}}),
         ("study", "study.sae.steps=many"), subprocess_default=True,
         cli_pattern=r"study.sae.steps=many .*could not be converted to Integer"),
    Case("wrong_config_value", ConfigError, r"sae.steps must be an integer >= 1, got 0", _study({"sae": {"steps": 0}}),
         ("study", "study.sae.steps=0"), subprocess_default=True),
    Case("unknown_config_key", ConfigError, r"unknown key|not in 'StudyConfig'", _study({"colour": 1}),
         ("study", "study.colour=1"), cli_pattern=r"Key 'colour' not in 'StudyConfig'"),
    Case("unknown_study_preset", ConfigError, r"Could not find 'study/nope'", _precheck("study=nope"),
         ("study", "study=nope")),
    Case("unknown_analysis", ConfigError, r"unknown or missing analyses", _study({"analyses": ["astrology"]}),
         ("study", "study.analyses=[astrology]")),
    Case("activations_from_different_tokens", MatchError, r"different tokens", _match_other_tokens,
         ("tool", "match", "{root}/sae_a", "{root}/sae_b", "--view", "activations", "--store", "{root}/store",
          "--store-b", "{root}/store_other_tokens"), subprocess_default=True),
    Case("token_ids_do_not_match_rows", MatchError, r"token ids", _match_token_count),
    Case("output_folder_holds_another_study", ArtifactError, r"already holds study 'someone_else'",
         _precheck("study.out_dir={root}/other_study"), ("study", "study.out_dir={root}/other_study"),
         subprocess_default=True),
    Case("match_out_file_is_not_a_match_summary", ArtifactError, r"not a match summary",
         _tool("match", "{root}/sae_a", "{root}/sae_b", "--out", "{root}/notes.json"),
         ("tool", "match", "{root}/sae_a", "{root}/sae_b", "--out", "{root}/notes.json")),
    Case("study_name_escapes_output_root", ConfigError, r"study.name '../evil'", _study({"name": "../evil"}),
         ("study", "study.name=../evil")),
    Case("checkpoint_name_escapes_model_folder", ConfigError, r"would leave the model folder",
         _study({"models": [{"name": "m", "zoo": "tiny_gpt2", "checkpoints": ["../../etc"]}]})),
    Case("zoo_preset_unknown", ConfigError, r"unknown zoo preset", _study({"models": [{"name": "m", "zoo": "../x"}]})),
    Case("path_leaves_output_folder", ConfigError, r"leaves the output folder", _inside),
    Case("pickle_file_refused", ArtifactError, r"pickle", _describe("weights.bin"), ("tool", "inspect", "{root}/weights.bin")),
    Case("pickled_code_in_model_weights", ModelLoadError, r"pickle holding more than tensors",
         lambda w: _load_model(w, "model_pickle"), ("tool", "inspect", "{root}/model_pickle")),
    Case("unknown_match_method", MatchError, r"unknown method", lambda w: _match(w, "sae_a", "sae_b", method="nearest"),
         ("tool", "match", "{root}/sae_a", "{root}/sae_b", "--method", "nearest")),
    Case("unknown_tool_command", None, "", None, ("tool", "frobnicate"), subprocess_default=True),
]


def test_catalogue_is_large_and_distinct():
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    assert len([c for c in CASES if c.call is not None]) >= 20
    assert len([c for c in CASES if c.cli]) >= 20


def _check_message(exc: BaseException, case: Case) -> None:
    text = str(exc)
    assert "\n" not in text and "\r" not in text, text
    problem, sep, fix = text.partition("; ")
    assert sep and problem.strip() and fix.strip(), f"not 'problem; fix': {text!r}"
    assert re.search(case.pattern, text), f"{case.name}: {text!r} lacks {case.pattern!r}"


@pytest.mark.parametrize("case", [c for c in CASES if c.call is not None], ids=lambda c: c.name)
def test_library_raises_one_line_error(case: Case, world: World):
    before = snapshot(world.root)
    with pytest.raises(UniversalityError) as info:
        case.call(world)
    assert isinstance(info.value, case.error), f"{case.name}: {type(info.value).__name__}: {info.value}"
    _check_message(info.value, case)
    assert snapshot(world.root) == before
    assert not (world / "PICKLE_RAN").exists()


def _argv(case: Case, world: World) -> list[str]:
    return [a.format(root=world.root) for a in case.cli[1:]]


def _check_stderr(err: str, case: Case) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"{case.name}: expected one error line, got {err!r}"
    assert "Traceback" not in err, err
    pattern = case.cli_pattern if case.cli_pattern is not None else case.pattern
    assert re.search(pattern, lines[0]), f"{case.name}: {lines[0]!r} lacks {pattern!r}"
    assert "; " in lines[0]


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=lambda c: c.name)
def test_command_line_in_process(case: Case, world: World, capsys, monkeypatch):
    monkeypatch.chdir(world.root)
    before = snapshot(world.root)
    argv = _argv(case, world)
    if case.cli[0] == "tool":
        from universality.cli import main

        try:
            rc = main(argv)
        except SystemExit as stop:  # argparse usage errors
            rc = stop.code
    else:
        from universality.__main__ import main as study_main

        with pytest.raises(SystemExit) as stop:
            study_main(argv)
        rc = stop.value.code
    err = capsys.readouterr().err
    assert rc == 2
    _check_stderr(err, case)
    assert snapshot(world.root) == before
    assert not (world / "PICKLE_RAN").exists()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    return env


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=() if c.subprocess_default else pytest.mark.slow) for c in CASES if c.cli],
    ids=lambda c: c.name,
)
def test_command_line_subprocess(case: Case, world: World):
    before = snapshot(world.root)
    module = "universality.cli" if case.cli[0] == "tool" else "universality"
    proc = subprocess.run([sys.executable, "-m", module, *_argv(case, world)], cwd=world.root, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    _check_stderr(proc.stderr, case)
    assert snapshot(world.root) == before


def test_good_input_still_works(world: World, capsys, tmp_path):
    """The same commands succeed on good input (so the catalogue tests bad input, not a broken tool)."""
    from universality.cli import main

    out = tmp_path / "match.json"
    assert main(["inspect", str(world / "sae_a"), "--expect", f"site={SITE0}"]) == 0
    assert main(["inspect", str(world / "store"), "--deep"]) == 0
    shown = capsys.readouterr().out
    assert "kind: dictionary" in shown and "kind: activation_store" in shown and f"site: {SITE0}" in shown
    assert main(["match", str(world / "sae_a"), str(world / "sae_b"), "--store", str(world / "store"),
                 "--view", "activations", "--n-perm", "1", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["format"] == "universality.match_summary/1" and summary["pairs"] == 32
    metrics = {(m["metric"], m["direction"]) for m in summary["metrics"]}
    assert ("mppc", "a->b") in metrics and ("mean_matched_cosine", "a<->b") in metrics
    assert json.loads(printed)["pairs"] == 32
    # a second run may overwrite its own earlier summary
    assert main(["match", str(world / "sae_a"), str(world / "sae_b"), "--n-perm", "0", "--out", str(out)]) == 0
    # Gromov-Wasserstein compares dictionaries of different widths, where the weight view refused
    assert main(["match", str(world / "sae_a"), str(world / "sae_wide"), "--method", "gw", "--n-perm", "0"]) == 0
    capsys.readouterr()


def test_inspect_describes_every_kind_of_artifact(world: World, capsys, tmp_path):
    from universality.cli import describe_path, main
    from universality.train.checkpoint import write_checkpoint

    write_checkpoint(tmp_path / "run", {"sae/x/W_dec": torch.ones(2, 3), "rng/torch": torch.zeros(4, dtype=torch.uint8)},
                     {"step": 7, "tokens": 700})
    kinds = {
        "model": describe_path(world / "model"),
        "series": describe_path(world / "series", revision="step2"),
        "json": describe_path(world / "notes.json"),
        "study": describe_path(world / "other_study"),
        "checkpoint": describe_path(tmp_path / "run"),
        "file": describe_path(world / "sae_a" / "weights.safetensors"),
    }
    assert kinds["model"]["kind"] == "model" and kinds["model"]["family"] == "gpt2" and kinds["model"]["n_layers"] == 2
    assert kinds["series"]["revision"] == "step2" and kinds["series"]["checkpoints"] == ["step0", "step2"]
    assert kinds["json"]["content"] == {"mine": True}
    assert kinds["study"]["study"] == "someone_else" and kinds["study"]["stages"] == []
    assert kinds["checkpoint"]["step"] == 7 and kinds["checkpoint"]["dictionaries"] == ["x"]
    assert set(kinds["file"]["tensors"]) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert main(["inspect", str(world / "model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["d_model"] == kinds["model"]["d_model"]
    assert main(["validate", "study=layer_flow", f"study.out_dir={tmp_path / 'new'}"]) == 0
    assert "study: layer_flow" in capsys.readouterr().out and not (tmp_path / "new").exists()
