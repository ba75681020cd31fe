"""The package installs from a wheel and finds its configs and corpus without the repository.

A copy of the source is built into a wheel (``pip wheel --no-build-isolation``, so no network), the
wheel is installed with ``--no-deps`` into a fresh virtual environment that sees this environment's
dependencies through a ``.pth`` file, and a subprocess started in an empty folder outside the
repository (clean ``PYTHONPATH``) composes every study preset, loads every zoo preset, reads the
shipped corpus, and runs ``python -m universality --help`` and ``--cfg job``. The same copy is also
installed in editable mode, whose configs are the source folder's ``configs/``.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("universality", "models", "analysis", "configs")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")

PROBE = r"""
import json, sys
from pathlib import Path
import universality, universality.resources as res
from universality.data.sources import corpus_path, shakespeare
from universality.study.config import CONFIG_DIR, compose_study
from universality.zoo.config import load_preset

studies = res.preset_names("study")
composed = {name: compose_study([f"study={name}"]).name for name in studies}
zoo = {name: load_preset(name).family for name in res.preset_names("zoo")}
print(json.dumps({"module": universality.__file__, "config_dir": str(res.config_dir()), "CONFIG_DIR": str(CONFIG_DIR),
                  "studies": list(studies), "composed": composed, "zoo": zoo, "corpus": str(corpus_path()),
                  "corpus_docs": sum(1 for _ in shakespeare(limit=5)),
                  "sys_path_has_repo": any(Path(p or ".").resolve() == Path(sys.argv[1]) for p in sys.path)}))
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "UNIVERSALITY_CONFIGS")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _new_venv(path: Path) -> tuple[Path, Path]:
    """A venv without pip whose ``site-packages`` also reads this interpreter's site-packages (the
    dependencies: torch, hydra, ...) through a .pth file. Returns (python, its site-packages)."""
    _run([sys.executable, "-m", "venv", "--without-pip", path])
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        env=_clean_env()).stdout.strip())
    deps = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (purelib / "zz_main_env_deps.pth").write_text("".join(f"{p}\n" for p in deps if Path(p).is_dir()))
    return python, purelib


def _pip_install(python: Path, purelib: Path, *args: str | Path) -> None:
    """Install with this environment's pip into ``python``'s venv (``--ignore-installed``: the editable
    install seen through the .pth must neither satisfy nor be touched by it)."""
    base = [sys.executable, "-m", "pip"]
    if tuple(int(x) for x in metadata.version("pip").split(".")[:2]) >= (22, 3):
        _run([*base, "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed", *args],
             env=_clean_env())
    else:  # pip without --python: install into the venv's site-packages directly
        _run([*base, "install", "--no-deps", "--no-index", "--ignore-installed", "--target", purelib, *args],
             env=_clean_env())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what the build needs (top-level files + the package folders), so building neither
    writes build/ or *.egg-info into the shared checkout nor picks up its stale build/ folder."""
    src = tmp_path_factory.mktemp("src") / "universality-src"
    src.mkdir()
    for item in ROOT.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, src / item.name)
    for name in SOURCE_DIRS:
        shutil.copytree(ROOT / name, src / name, ignore=IGNORE)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source],
         cwd=source, env=_clean_env())
    (whl,) = out.glob("universality-*.whl")
    return whl


def test_wheel_ships_configs_and_corpus(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"universality/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
               for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert {"universality/configs/config.yaml", "universality/configs/study/quickstart.yaml"} <= names
    corpus = {f"universality/data/corpus/{p.name}" for p in (ROOT / "universality/data/corpus").iterdir() if p.is_file()}
    assert "universality/data/corpus/shakespeare.jsonl.xz" in corpus and corpus <= names, sorted(corpus - names)
    assert not any(n.startswith(("configs/", "tests/", "build/")) for n in names)  # nothing at the top level


def test_installed_wheel_composes_every_study_and_prints_help(wheel, tmp_path):
    venv = tmp_path / "venv"
    python, purelib = _new_venv(venv)
    _pip_install(python, purelib, wheel)
    elsewhere = tmp_path / "elsewhere"  # cwd outside the repository: the repo is not importable from it
    elsewhere.mkdir()
    env = _clean_env()
    probe = json.loads(_run([python, "-c", PROBE, ROOT], cwd=elsewhere, env=env).stdout.strip().splitlines()[-1])

    venv_root = venv.resolve()
    module = Path(probe["module"]).resolve()
    assert venv_root in module.parents and ROOT not in module.parents, probe["module"]
    assert not probe["sys_path_has_repo"]
    for key in ("config_dir", "CONFIG_DIR", "corpus"):
        path = Path(probe[key]).resolve()
        assert venv_root in path.parents and ROOT not in path.parents, (key, probe[key])
    repo_studies = sorted(p.stem for p in (ROOT / "configs" / "study").glob("*.yaml"))
    assert probe["studies"] == repo_studies
    assert sorted(probe["composed"]) == repo_studies
    assert sorted(probe["zoo"]) == sorted(p.stem for p in (ROOT / "configs" / "zoo").glob("*.yaml"))
    assert probe["corpus_docs"] == 5

    helped = _run([python, "-m", "universality", "--help"], cwd=elsewhere, env=env).stdout
    for name in repo_studies:
        assert f"\n  {name} " in helped, name
    assert f"Configs: {probe['config_dir']}" in helped and "study.sae.architecture" in helped
    scripts = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["scripts"])
    script = scripts / ("universality.exe" if os.name == "nt" else "universality")
    assert _run([script, "--help"], cwd=elsewhere, env=env).stdout == helped
    # @hydra.main finds the packaged config folder too
    job = _run([python, "-m", "universality", "study=quickstart", "--cfg", "job"], cwd=elsewhere, env=env).stdout
    assert "name: quickstart" in job


def test_editable_install_reads_the_source_configs(source, tmp_path):
    python, purelib = _new_venv(tmp_path / "venv")
    _pip_install(python, purelib, "--no-build-isolation", "-e", source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import universality.resources as r; print(r.config_dir()); print(*r.preset_names('study'))"
    out = _run([python, "-c", code], cwd=elsewhere, env=_clean_env()).stdout.splitlines()
    assert Path(out[0]) == (source / "configs").resolve()
    assert out[1].split() == sorted(p.stem for p in (source / "configs" / "study").glob("*.yaml"))
