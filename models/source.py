"""Where a model's files are (:class:`ModelSource`), and reading its ``config.json`` and tokenizer.

Shared by the loading backends: :mod:`models.loading` resolves a name or folder to a
:class:`ModelSource` and loads Hugging Face models; :mod:`models.tlens` loads the same source
into TransformerLens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from universality.errors import ModelLoadError

__all__ = ["ModelSource", "read_raw_config", "load_tokenizer"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are.

    ``location`` is what ``from_pretrained`` gets (folder or hub name), ``hub_revision`` the hub
    revision (None for folders), ``revision`` the name reported on the adapter, ``checkpoints`` the
    series' ordered revisions, ``series_source`` what ``at_revision`` reloads from, and
    ``tokenizer_fallback`` a folder to take the tokenizer from when a checkpoint has none.
    """

    series_source: str
    location: str
    hub_revision: str | None
    revision: str | None
    checkpoints: tuple[str, ...]
    tokenizer_fallback: str | None


def read_raw_config(src: ModelSource) -> dict[str, Any]:
    """The source's ``config.json`` as a dict; a one-line :class:`ModelLoadError` when it is missing."""
    from transformers.utils import cached_file

    try:
        file = cached_file(src.location, "config.json", revision=src.hub_revision)
    except (OSError, ValueError) as err:
        rev = f" at revision {src.hub_revision!r}" if src.hub_revision else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot find model {src.location!r}{rev} ({first[:160]})",
            "check the name and revision; offline, the model must be in the HF cache (HF_HUB_CACHE) or a local folder",
        ) from err
    if file is None:
        raise ModelLoadError(f"model {src.location!r} has no config.json", "check the name or path")
    with open(file, encoding="utf-8") as fh:
        return json.load(fh)


def load_tokenizer(src: ModelSource, trust_remote_code: bool):
    """The source's tokenizer (else the series' fallback folder's), or None when neither has one."""
    from transformers import AutoTokenizer

    candidates = [(src.location, src.hub_revision)]
    if src.tokenizer_fallback:
        candidates.append((src.tokenizer_fallback, None))
    for location, rev in candidates:
        try:
            return AutoTokenizer.from_pretrained(location, revision=rev, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError):
            continue
    return None
