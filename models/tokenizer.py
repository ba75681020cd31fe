"""Train a small byte-level BPE tokenizer and save it in the Hugging Face folder layout.

The tokenizer is the GPT-2 recipe (byte-level pre-tokenisation, BPE merges, one special token
``<|endoftext|>`` used as BOS, EOS, UNK and pad), trained with the ``tokenizers`` library. It is
saved with ``save_pretrained`` so ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it
offline. Used to give tiny test models (and small models trained on a shared corpus) one tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from universality.errors import ConfigError, DataError

__all__ = ["train_byte_level_bpe", "SPECIAL_TOKEN"]

SPECIAL_TOKEN = "<|endoftext|>"
_N_BYTES = 256


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike):
    """Train a byte-level BPE on ``texts`` and save it to ``out_dir``.

    Returns the loaded :class:`transformers.PreTrainedTokenizerFast`. ``vocab_size`` counts the 256
    byte symbols and the special token, so it must be at least 257. Texts must not be empty.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < _N_BYTES + 1:
        raise ConfigError(
            f"vocab_size must be an integer >= {_N_BYTES + 1} (256 bytes + <|endoftext|>), got {vocab_size!r}",
            "pass a larger vocab_size",
        )
    corpus = [t for t in texts if isinstance(t, str) and t]
    if not corpus:
        raise DataError("no non-empty texts to train the tokenizer on", "pass an iterable of non-empty strings")

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast
