import pytest
import torch

from universality.errors import MatchError
from universality.match.similarity import dense_similarity, topk_partners
from universality.match.views import codes_from_dense

from .helpers import unit


def test_blocked_cosine_and_streaming_topk_equal_dense(device):
    A, B = unit(torch.randn(70, 12)).to(device), unit(torch.randn(45, 12)).to(device)
    S = A @ B.T
    assert torch.allclose(dense_similarity(A, B, block=8), S, atol=1e-6)
    tk = topk_partners(A, B, k=3, block=9, progress=False)
    rv, ri = S.topk(3, dim=1)
    cv, ci = S.topk(3, dim=0)
    assert torch.allclose(tk.row_values, rv.cpu(), atol=1e-6) and torch.equal(tk.row_indices, ri.cpu())
    assert torch.allclose(tk.col_values, cv.T.cpu(), atol=1e-6) and torch.equal(tk.col_indices, ci.T.cpu())


def test_pearson_and_jaccard_equal_direct_formulas(device):
    g = torch.Generator().manual_seed(0)
    za = torch.relu(torch.randn(300, 20, generator=g)) * (torch.rand(300, 20, generator=g) < 0.2)
    zb = torch.cat([za[:, :8] * 2.0, torch.relu(torch.randn(300, 5, generator=g))], 1)
    zb[:, -1] = 0.0  # a dead feature: correlation 0 by convention
    ca = codes_from_dense(za, torch.arange(300)).to(device)
    cb = codes_from_dense(zb, torch.arange(300)).to(device)
    R = dense_similarity(ca, cb, "pearson", block=6).cpu()
    ref = torch.nan_to_num(torch.corrcoef(torch.cat([za.T, zb.T]))[:20, 20:])
    assert torch.allclose(R, ref, atol=1e-5)
    assert torch.allclose(torch.diagonal(R[:8, :8]), torch.ones(8), atol=1e-5)
    J = dense_similarity(ca, cb, "jaccard", block=7).cpu()
    fa, fb = (za != 0).float(), (zb != 0).float()
    inter = fa.T @ fb
    union = fa.sum(0)[:, None] + fb.sum(0)[None, :] - inter
    assert torch.allclose(J, torch.where(union > 0, inter / union.clamp_min(1), torch.zeros(1)), atol=1e-6)


def test_codes_from_different_tokens_refused():
    z = torch.rand(10, 3)
    with pytest.raises(MatchError, match="different tokens"):
        dense_similarity(codes_from_dense(z, torch.arange(10)), codes_from_dense(z, torch.arange(10) + 1), "pearson")
    with pytest.raises(MatchError, match="different spaces"):
        dense_similarity(unit(torch.randn(4, 5)), unit(torch.randn(4, 6)))


@pytest.mark.gpu
def test_cosine_topk_on_gpu_matches_cpu():
    A, B = unit(torch.randn(500, 32)), unit(torch.randn(400, 32))
    cpu = topk_partners(A, B, k=4, block=64, progress=False)
    gpu = topk_partners(A.cuda(), B.cuda(), k=4, block=64, progress=False)
    assert torch.allclose(cpu.row_values, gpu.row_values, atol=1e-5)
