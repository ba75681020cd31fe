import pytest
import torch

from universality.errors import MatchError
from universality.match import lineage

from .helpers import unit


def test_lineage_events_and_chains_on_a_scripted_series():
    g = torch.Generator().manual_seed(0)
    base = unit(torch.randn(6, 32, generator=g))
    kids = unit(base[2][None] + 0.45 * unit(torch.randn(2, 32, generator=g)))
    new = unit(torch.randn(1, 32, generator=g))
    s0 = base
    s1 = torch.cat([base[[0, 1, 3, 4, 5]], kids])          # feature 2 splits into two
    s2 = torch.cat([s1[[0, 1, 2, 3]], s1[5:], new])         # feature 4 (base 5) dies, one is born
    lin = lineage([s0, s1, s2], threshold=0.7, labels=["step0", "step1", "step2"])
    ev = lin.events
    splits = ev[(ev.event == "split") & (ev.step == "step0->step1")]
    assert set(splits.feature_from) == {2} and set(splits.feature_to) == {5, 6}
    deaths = ev[(ev.event == "death") & (ev.step == "step1->step2")]
    births = ev[(ev.event == "birth") & (ev.step == "step1->step2")]
    assert list(deaths.feature_from) == [4] and list(births.feature_to) == [6]
    chain0 = lin.chains[lin.chains.start == "step0"].set_index("chain")
    # base 0, 1, 3, 4 persist through all three steps, and base 2 continues into its closer child
    assert (chain0.persistence == 3).sum() == 5
    assert chain0.loc[chain0.features.map(lambda f: f[0]) == 5, "persistence"].item() == 2  # base 5 dies
    assert lin.counts().loc["step0->step1", "split"] == 2
    with pytest.raises(MatchError):
        lineage([s0])


def test_lineage_detects_merges():
    g = torch.Generator().manual_seed(1)
    a = unit(torch.randn(2, 16, generator=g))
    pair = unit(torch.stack([a[0] + 0.3 * a[1], a[0] - 0.1 * a[1]]))
    lin = lineage([pair, a[:1]], threshold=0.7)
    merges = lin.events[lin.events.event == "merge"]
    assert set(merges.feature_from) == {0, 1} and set(merges.feature_to) == {0}
