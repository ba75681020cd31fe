"""``compare`` says (note and warning) when two dictionaries, or a dictionary and its skyline, started from the
same initial weights; independent starts get no such note."""

from __future__ import annotations

import warnings

import pytest
import torch

from universality.match.compare import SHARED_INIT_NOTE, compare
from universality.sae import make_sae, sae_config


def _sae(seed: int, meta: dict) -> torch.nn.Module:
    sae = make_sae(sae_config("topk", d_in=12, d_sae=24, k=3), seed=seed)
    sae.meta.update(meta)
    return sae


def test_compare_notes_and_warns_a_shared_start():
    a = _sae(0, {"site": "blocks.0.hook_resid_post", "train": {"seed": 0}})
    b = _sae(0, {"site": "blocks.1.hook_resid_post", "train": {"seed": 0}})
    with pytest.warns(UserWarning, match="shared initialisation"):
        table = compare(a, b, n_perm=0)
    assert table.note.str.contains(SHARED_INIT_NOTE, regex=False).all()


def test_compare_is_silent_for_independent_starts():
    a = _sae(0, {"site": "blocks.0.hook_resid_post", "train": {"seed": 0}})
    b = _sae(1, {"site": "blocks.1.hook_resid_post", "train": {"seed": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = compare(a, b, n_perm=0)
    assert not table.note.str.contains("initial", regex=False).any()


def test_compare_flags_a_skyline_that_shares_the_start_of_a():
    a = _sae(0, {"site": "s", "train": {"seed": 0}})
    b = _sae(1, {"site": "s", "train": {"seed": 1}})
    sky = _sae(0, {"site": "s", "name": "a-seed2", "train": {"seed": 0}})
    with pytest.warns(UserWarning, match="skyline of a"):
        table = compare(a, b, skyline=sky, n_perm=0)
    assert table.note.str.contains("skyline of a shares its initialisation", regex=False).all()
