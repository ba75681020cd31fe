"""``python -m universality --help`` and the config folder lookup (:mod:`universality.resources`).

The help lists every study preset (``configs/study/*.yaml``) with the first sentence of its leading
comment, and every study field with its type and default, generated from the StudyConfig
dataclasses; Hydra's own help stays reachable through ``--hydra-help``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from universality import resources
from universality.__main__ import help_text, main, study_fields
from universality.study.config import CONFIG_DIR, ModelSpec, StudyConfig
from universality.zoo.config import preset_names as zoo_presets

ROOT = Path(__file__).resolve().parents[1]


def _leaf_keys(cls: type, prefix: str) -> set[str]:
    """Every ``study.a.b`` key of the dataclasses, walked independently of the code under test."""
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        default = f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            keys |= _leaf_keys(type(default), f"{prefix}.{f.name}")
        else:
            keys.add(f"{prefix}.{f.name}")
    return keys


def test_config_dir_is_the_checkouts_configs_folder():
    assert resources.config_dir() == (ROOT / "configs").resolve()
    assert Path(CONFIG_DIR) == resources.config_dir()
    assert (resources.config_dir() / "config.yaml").is_file()


def test_help_lists_every_study_with_its_description(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # descriptions wrap over lines
    studies = sorted(p.stem for p in (ROOT / "configs" / "study").glob("*.yaml"))
    assert studies and resources.preset_names("study") == tuple(studies)
    for name in studies:
        assert f"\n  {name} " in out
        description = resources.preset_description("study", name)
        assert description and " ".join(description.split()) in flat
    assert "Powered by Hydra" not in out and "--hydra-help" in out
    assert resources.preset_description("study", "quickstart").startswith("The embedded default:")


def test_help_lists_every_study_field_with_type_and_default():
    rows = study_fields()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys))
    # every leaf of the dataclasses, and the entries of the models list
    assert _leaf_keys(StudyConfig, "study") <= set(keys)
    for f in dataclasses.fields(ModelSpec):
        assert f"study.models[].{f.name}" in keys
    text = help_text(width=100)
    table = {r[0]: r for r in rows}
    assert table["study.name"][1:] == ("str", "(required)")
    assert table["study.device"][2] == StudyConfig.__dataclass_fields__["device"].default
    for key, typ, default in rows:
        line = next(ln for ln in text.splitlines() if ln.split()[:1] == [key])
        assert typ in line and line.rstrip().endswith(default)


def test_help_short_flag_and_no_hydra_output(capsys):
    main(["study=quickstart", "-h"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m universality") and "study fields" in out


def test_hydra_help_still_reaches_hydra():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "universality", "--hydra-help"], capture_output=True, text=True,
                         timeout=120, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "Hydra" in res.stdout and "== Flags ==" in res.stdout


def test_env_var_points_every_lookup_at_another_folder(tmp_path, monkeypatch):
    (tmp_path / "study").mkdir()
    (tmp_path / "zoo").mkdir()
    (tmp_path / "study" / "mine.yaml").write_text(
        "# @package _global_\n#\n# First sentence (e.g. this). Second sentence.\n# More.\ndefaults: []\n")
    (tmp_path / "zoo" / "tiny_x.yaml").write_text("family: gpt2\n")
    monkeypatch.setenv(resources.CONFIGS_ENV, str(tmp_path))
    assert resources.config_dir() == tmp_path.resolve()
    assert resources.preset_names("study") == ("mine",)
    assert resources.preset_description("study", "mine") == "First sentence (e.g. this)."
    assert zoo_presets() == ("tiny_x",)
    assert "  mine " in help_text()


@pytest.mark.parametrize("group", ["study", "sweep"])
def test_every_shipped_preset_has_a_description(group):
    assert resources.preset_names(group)
    for name in resources.preset_names(group):
        assert resources.preset_description(group, name), f"configs/{group}/{name}.yaml has no leading comment"


def test_the_docs_list_every_study_field():
    from universality.__main__ import study_fields

    doc = (Path(__file__).resolve().parents[1] / "docs" / "readme" / "60_studies.md").read_text()
    missing = [key for key, _, _ in study_fields() if f"| `{key}` |" not in doc]
    assert not missing, f"docs/readme/60_studies.md lacks {missing}; regenerate its field table"
