"""More bad inputs of ``universality-tool`` (catalogue style of test_bad_inputs.py): each gives one
``error: problem; fix`` line, exit status 2, no traceback, and leaves the disk as it was.

Cases: an ``--out`` file that cannot be written, a skyline of another width than the dictionary it
stands for, an unquoted path with spaces or non-ASCII characters (split by the shell), and a SAELens
folder whose cfg.json lacks a field.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from universality.errors import ArtifactError, MatchError, UniversalityError

REPO = Path(__file__).resolve().parents[2]
SITE0 = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from universality.sae import make_sae, sae_config
    from universality.sae.formats import save_saelens

    root = tmp_path_factory.mktemp("renovation")
    topk = lambda d_in, d_sae: sae_config("topk", d_in, d_sae, k=4)  # noqa: E731
    for name, seed, d_in, d_sae in (("sae_a", 0, 16, 32), ("sae_b", 1, 16, 32), ("sky_d_in", 2, 24, 32),
                                    ("sky_d_sae", 3, 16, 64), ("my sae", 4, 16, 32), ("données é", 5, 16, 32)):
        make_sae(topk(d_in, d_sae), seed=seed, meta={"site": SITE0}).save(root / name)
    save_saelens(make_sae(topk(16, 32), seed=6), root / "saelens_no_d_in")
    doc = json.loads((root / "saelens_no_d_in" / "cfg.json").read_text())
    doc.pop("d_in")
    (root / "saelens_no_d_in" / "cfg.json").write_text(json.dumps(doc))
    (root / "a_file").write_text("not a folder\n")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         p.stat().st_mtime_ns)
    return out


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # {root} is the fixture folder; arguments are passed as the shell split them
    pattern: str
    error: type[UniversalityError] | None = None  # the library error, when the command's own function raises one


CASES = [
    Case("out_parent_is_a_file", ("match", "{root}/sae_a", "{root}/sae_b", "--n-perm", "0", "--out", "{root}/a_file/m.json"),
         r"cannot write --out .*a_file.* is a file", ArtifactError),
    Case("out_parent_is_a_file_deeper", ("match", "{root}/sae_a", "{root}/sae_b", "--out", "{root}/a_file/x/y/m.json"),
         r"a_file is a file, not a folder", ArtifactError),
    Case("skyline_of_another_d_in", ("match", "{root}/sae_a", "{root}/sae_b", "--skyline", "{root}/sky_d_in"),
         r"skyline .*sky_d_in has width d_in=24.* but dictionary a .*d_in=16", MatchError),
    Case("skyline_of_another_d_sae", ("match", "{root}/sae_a", "{root}/sae_b", "--skyline", "{root}/sky_d_sae"),
         r"skyline .*sky_d_sae has width .*d_sae=64.* but dictionary a .*d_sae=32", MatchError),
    Case("skyline_b_of_another_width", ("match", "{root}/sae_a", "{root}/sae_b", "--skyline", "{root}/sae_b",
                                        "--skyline-b", "{root}/sky_d_in"),
         r"--skyline-b .*sky_d_in has width d_in=24.* but dictionary b", MatchError),
    Case("unquoted_path_with_a_space_inspect", ("inspect", "{root}/my", "sae"), r"split at its spaces.*quote it"),
    Case("unquoted_path_with_a_space_match_extra", ("match", "{root}/my", "sae", "{root}/sae_b"),
         r"split at its spaces.*quote it"),
    Case("unquoted_path_with_a_space_match_missing", ("match", "{root}/my", "sae"),
         r"'.*/my' does not exist, but '.*/my sae' does.*quote it"),  # found by main(), which sees the raw arguments
    Case("unquoted_skyline_with_a_space", ("match", "{root}/sae_a", "{root}/sae_b", "--skyline", "{root}/my", "sae"),
         r"split at its spaces.*quote it"),
    Case("unquoted_unicode_path", ("inspect", "{root}/données", "é"), r"'.*/données é'.*split at its spaces.*quote it"),
    Case("extra_argument_without_a_path_behind_it", ("inspect", "{root}/sae_a", "extra"),
         r"unrecognized arguments: extra; .*quote it"),
    Case("saelens_cfg_without_d_in", ("inspect", "{root}/saelens_no_d_in"), r"lacks the field 'd_in'", ArtifactError),
]


def _argv(case: Case, root: Path) -> list[str]:
    return [a.format(root=root) for a in case.argv]


def _check_err(err: str, case: Case) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"{case.name}: {err!r}"
    assert "Traceback" not in err, err
    assert re.search(case.pattern, lines[0]), f"{case.name}: {lines[0]!r} lacks {case.pattern!r}"
    assert "; " in lines[0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_command_line_in_process(case: Case, root: Path, capsys, monkeypatch):
    from universality.cli import main

    monkeypatch.chdir(root)
    before = snapshot(root)
    try:
        rc = main(_argv(case, root))
    except SystemExit as stop:  # argparse usage errors
        rc = stop.code
    assert rc == 2
    _check_err(capsys.readouterr().err, case)
    assert snapshot(root) == before


@pytest.mark.parametrize("case", [c for c in CASES if c.error is not None and c.argv[0] == "match"], ids=lambda c: c.name)
def test_library_side_raises_the_error_class(case: Case, root: Path):
    from universality.cli import build_parser, run_match

    args = build_parser().parse_args(_argv(case, root))
    with pytest.raises(UniversalityError) as info:
        run_match(args)
    assert isinstance(info.value, case.error)
    assert "\n" not in str(info.value) and re.search(case.pattern, str(info.value))


@pytest.mark.parametrize("name", ["skyline_of_another_d_in", "unquoted_path_with_a_space_inspect"])
def test_command_line_subprocess(name: str, root: Path):
    case = next(c for c in CASES if c.name == name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "universality.cli", *_argv(case, root)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    _check_err(proc.stderr, case)


def test_out_folder_without_write_permission(root: Path, tmp_path, capsys):
    from universality.cli import main

    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions do not bind this user (root)")
        rc = main(["match", str(root / "sae_a"), str(root / "sae_b"), "--n-perm", "0", "--out", str(locked / "m.json")])
        assert rc == 2
        err = capsys.readouterr().err
        assert re.search(r"cannot write --out .*read_only.* not writable", err) and "Traceback" not in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(stat.S_IRWXU)


def test_a_failed_write_of_out_is_one_line(root: Path, tmp_path, capsys, monkeypatch):
    """A write that fails after the checks (disk full, a race) still ends in one line, and nothing half-written."""
    import universality.io as uio
    from universality.cli import main

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(uio, "atomic_write_bytes", full)
    out = tmp_path / "m.json"
    assert main(["match", str(root / "sae_a"), str(root / "sae_b"), "--n-perm", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: cannot write --out .*m.json \(No space left on device\); ", err), err
    assert not out.exists()


def test_quoted_paths_with_spaces_and_unicode_work(root: Path, capsys):
    from universality.cli import main

    assert main(["inspect", str(root / "données é")]) == 0
    assert main(["match", str(root / "my sae"), str(root / "sae_b"), "--n-perm", "0", "--skyline", str(root / "sae_b"),
                 "--out", str(root.parent / "renovation_out" / "m.json")]) == 0
    assert json.loads((root.parent / "renovation_out" / "m.json").read_text())["pairs"] == 32
    capsys.readouterr()
