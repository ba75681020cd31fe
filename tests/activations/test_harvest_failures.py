"""A harvest that fails on bad input leaves nothing that blocks the corrected retry into the same
folder, and says what was wrong in one ``problem; fix`` line."""

from __future__ import annotations

import json

import pytest

from activation_helpers import SITES

from universality.activations import ActivationStore, harvest
from universality.activations.harvest import max_positions
from universality.activations.store import FORMAT, MANIFEST
from universality.data import Document, PackingConfig
from universality.errors import ConfigError, DataError, UniversalityError

GOOD = ["the quick brown fox jumps over the lazy dog", "a second document, a little longer than the first one"]
KW = dict(packing=PackingConfig(context_len=32), batch_size=4, shard_rows=64, progress=False)


class _NoBos:
    """A fast tokenizer without BOS and EOS tokens."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        if name in ("bos_token_id", "eos_token_id"):
            return None
        return getattr(self._inner, name)

    def __call__(self, *args, **kwargs):
        return self._inner(*args, **kwargs)


class _Adapter:
    """An adapter proxy with another tokenizer."""

    def __init__(self, adapter, tokenizer) -> None:
        self._adapter, self.tokenizer = adapter, tokenizer

    def __getattr__(self, name):
        return getattr(self._adapter, name)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "; " in text, text
    return text


def _fails_then_retry(adapter, bad, out, error, pattern, retry_adapter=None, retry_kw=None) -> None:
    """``bad`` (texts, overrides) fails with ``error``; the folder is left as it was; the retry succeeds."""
    texts, overrides = bad
    existed = out.exists()
    with pytest.raises(UniversalityError) as info:
        harvest(adapter, texts, SITES, out, **{**KW, **overrides})
    assert isinstance(info.value, error), repr(info.value)
    assert pattern in _one_line(info.value)
    if existed:
        assert list(out.iterdir()) == []
    else:
        assert not out.exists()
    store = harvest(retry_adapter or adapter, GOOD, SITES, out, **{**KW, **(retry_kw or {})})
    assert store.manifest["complete"] and store.n_rows > 0
    assert ActivationStore.open(out).n_rows == store.n_rows


@pytest.mark.parametrize("precreated", [False, True])
def test_empty_text(tiny_gpt2, tmp_path, precreated):
    out = tmp_path / "nested" / "store"
    if precreated:
        out.mkdir(parents=True)
    _fails_then_retry(tiny_gpt2, (["", ""], {}), out, DataError, "no rows")
    if not precreated:
        assert (tmp_path / "nested").is_dir()  # the retry made it; the failure had removed it


def test_bytes_that_do_not_decode(tiny_gpt2, tmp_path):
    _fails_then_retry(tiny_gpt2, ([b"caf\xe9 au lait"], {}), tmp_path / "store", DataError, "not valid UTF-8")


def test_lone_surrogate_in_a_document(tiny_gpt2, tmp_path):
    docs = [Document("d/0", GOOD[0]), Document("d/1", "broken \udcff text")]
    _fails_then_retry(tiny_gpt2, (docs, {}), tmp_path / "store", DataError, "'d/1'")


def test_tokenizer_without_bos(tiny_gpt2, tmp_path):
    no_bos = _Adapter(tiny_gpt2, _NoBos(tiny_gpt2.tokenizer))
    fixed = {"packing": PackingConfig(context_len=32, doc_separator=False, bos_every_context=False)}
    _fails_then_retry(no_bos, (GOOD, {}), tmp_path / "store", ConfigError, "neither a BOS nor an EOS",
                      retry_kw=fixed)


def test_context_longer_than_the_model_positions(tiny_gpt2, tmp_path):
    assert max_positions(tiny_gpt2) == 128
    too_long = {"packing": PackingConfig(context_len=512)}
    _fails_then_retry(tiny_gpt2, (GOOD, too_long), tmp_path / "store", ConfigError, "context_len=512")
    with pytest.raises(ConfigError) as info:
        harvest(tiny_gpt2, GOOD, SITES, tmp_path / "other", **{**KW, **too_long})
    assert "128" in _one_line(info.value) and not (tmp_path / "other").exists()


def test_mamba_has_no_position_limit(tmp_path):
    import models
    from models.testing import make_tiny_model

    mamba = models.load(str(make_tiny_model("mamba", tmp_path / "mamba")))
    assert max_positions(mamba) is None
    site = "blocks.0.hook_resid_post"
    store = harvest(mamba, GOOD * 8, [site], tmp_path / "store", packing=PackingConfig(context_len=160),
                    batch_size=2, progress=False)
    assert store.manifest["complete"]


def test_a_stub_manifest_without_shards_does_not_block(tiny_gpt2, tmp_path):
    """A stub left by an older version (or by a kill before the first shard) holds no rows: it is replaced."""
    out = tmp_path / "store"
    out.mkdir()
    stub = {"format": FORMAT, "key": "another-request", "model": "m", "sites": {}, "shards": [], "n_rows": 0,
            "contexts_done": 0, "complete": False}
    (out / MANIFEST).write_text(json.dumps(stub))
    store = harvest(tiny_gpt2, GOOD, SITES, out, **KW)
    assert store.manifest["complete"] and store.manifest["key"] != "another-request"


def test_a_huge_document_with_few_tokens_wanted_tokenises_a_bounded_prefix(tiny_gpt2, tmp_path):
    from universality.data import shakespeare

    class Counting:
        def __init__(self, inner) -> None:
            self._inner, self.chars = inner, 0

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __call__(self, texts, **kwargs):
            self.chars += sum(map(len, texts))
            return self._inner(texts, **kwargs)

    text = "\n\n".join(d.text for d in shakespeare())[:5_000_000]
    tok = Counting(tiny_gpt2.tokenizer)
    store = harvest(_Adapter(tiny_gpt2, tok), [text], SITES, tmp_path / "store", max_tokens=200, **KW)
    assert store.n_rows == 200
    assert tok.chars < 400_000, tok.chars  # a bounded prefix, not 5 MB


def test_capturing_contexts_longer_than_the_model_positions(tiny_gpt2):
    from universality.activations import capture_rows
    from universality.data import Packer

    batch = next(Packer(tiny_gpt2.tokenizer, PackingConfig(context_len=200)).batches([Document("d", GOOD[1] * 40)], 2))
    with pytest.raises(ConfigError) as info:
        capture_rows(tiny_gpt2, batch, SITES)
    assert "context_len=200" in _one_line(info.value) and "128 positions" in str(info.value)
