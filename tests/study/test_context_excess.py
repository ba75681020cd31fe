"""context_excess on hand cases: identity-driven features score 0, context-driven ones their share."""

import numpy as np
import pytest
import torch

from analysis.studies.common import context_excess
from universality.zoo import word_passage


def test_context_excess_hand_cases():
    # tokens: ids 1,2 outside the passage, the same ids 1,2 inside it (rows 2,3)
    ids = torch.tensor([1, 2, 1, 2])
    rows = torch.tensor([False, False, True, True])
    z = torch.tensor([
        # f0 fires on id 1 wherever it is; f1 only inside the passage; f2 twice as strong inside; f3 never
        [1.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 3.0, 2.0, 0.0],
        [0.0, 1.0, 2.0, 0.0],
    ])
    e = context_excess(z, rows, ids)
    # f0: mass 2, on rows 1, expected 1 (id 1 outside fires 1) -> 0
    # f1: mass 4, on rows 4, expected 0 -> 1
    # f2: mass 1 + 1 + 2 + 2 = 6, on rows 4, expected 1 + 1 = 2 -> 1/3
    np.testing.assert_allclose(e, [0.0, 1.0, 1 / 3, 0.0], atol=1e-12)


def test_tokens_only_in_the_passage_count_as_identity():
    ids = torch.tensor([1, 1, 9, 9])
    rows = torch.tensor([False, False, True, True])
    z = torch.tensor([[0.0], [0.0], [3.0], [1.0]])
    # id 9 never occurs outside: its mass is explained by identity, not context
    assert context_excess(z, rows, ids)[0] == pytest.approx(0.0)


def test_word_passage_uses_common_words_in_a_fixed_order():
    texts = ["the cat sat on the mat and the dog sat too"] * 3 + ["rare zebra"]
    a = word_passage(texts, seed=3, n_words=5, vocabulary=6)
    assert a == word_passage(texts, seed=3, n_words=5, vocabulary=6)
    assert a != word_passage(texts, seed=4, n_words=5, vocabulary=6)
    words = a.rstrip(".").lower().split()
    assert len(words) == 5 and "zebra" not in words
    assert set(words) <= {"the", "cat", "sat", "on", "mat", "and", "dog", "too", "rare"}
