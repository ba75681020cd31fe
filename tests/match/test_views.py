import pytest
import torch

from universality.errors import MatchError
from universality.match.views import (
    codes_from_dense,
    decoder_directions,
    encode_codes,
    encoder_directions,
    token_fingerprint,
)

from .helpers import ToySAE, unit


def test_directions_are_unit_rows_from_sae_and_tensor():
    D = torch.randn(10, 6) * 3
    sae = ToySAE(D)
    assert torch.allclose(decoder_directions(sae).norm(dim=1), torch.ones(10))
    assert torch.allclose(encoder_directions(sae), unit(D), atol=1e-6)  # W_enc (d, n) -> rows
    assert torch.allclose(decoder_directions(D), unit(D))
    with pytest.raises(MatchError):
        decoder_directions(torch.randn(3, 4, 5))
    with pytest.raises(MatchError):
        decoder_directions("not a dictionary")


def test_codes_statistics_and_rows_roundtrip():
    z = torch.relu(torch.randn(50, 7)) * (torch.rand(50, 7) < 0.4)
    c = codes_from_dense(z, token_ids=torch.arange(50))
    assert c.n == 7 and c.n_tokens == 50
    assert torch.allclose(c.rows(2, 5), z[:, 2:5].T)
    assert torch.allclose(c.mean, z.mean(0), atol=1e-6)
    assert torch.allclose(c.std, z.std(0, unbiased=False), atol=1e-5)
    assert torch.equal(c.nnz, (z != 0).sum(0))
    sub = c.subset(torch.tensor([4, 1]))
    assert torch.allclose(sub.rows(0, 2), z[:, [4, 1]].T) and sub.fingerprint == c.fingerprint


def test_encode_codes_matches_dense_encode_and_fingerprints_tokens():
    x = torch.randn(40, 6)
    sae = ToySAE(torch.randn(9, 6), bias=0.1)
    c = encode_codes(sae, x, token_ids=torch.arange(40), batch_size=16)
    assert torch.allclose(c.rows(0, 9), sae.encode(x).T, atol=1e-6)
    assert c.fingerprint == token_fingerprint(torch.arange(40)) != token_fingerprint(torch.arange(1, 41))
    with pytest.raises(MatchError):
        encode_codes(sae, x, token_ids=torch.arange(39))
    with pytest.raises(MatchError):
        encode_codes(torch.randn(9, 6), x)
