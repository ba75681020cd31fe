"""Site grammar: round trips, ordering and errors (property-based with hypothesis)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from universality.errors import UnknownSiteError
from universality.sites import HOOKS, ROUTING_HOOKS, Site, parse_sites, site

layers = st.integers(min_value=0, max_value=10_000)
hooks = st.sampled_from(HOOKS)


@given(layers, hooks)
def test_parse_format_round_trip(layer, hook):
    s = Site.parse(f"blocks.{layer}.{hook}")
    assert (s.layer, s.hook) == (layer, hook)
    assert str(s) == s.name == f"blocks.{layer}.{hook}"
    assert Site.parse(s.name) == s == site(layer, hook)
    assert s.is_routing == (hook in ROUTING_HOOKS)


@given(layers, hooks)
def test_short_hook_names(layer, hook):
    short = hook.removeprefix("mlp.").removeprefix("hook_")
    assert site(layer, short) == Site.parse(f"blocks.{layer}.{hook}")


@given(st.lists(st.tuples(layers, hooks), min_size=1, max_size=20))
def test_parse_sites_sorted_by_forward_order(pairs):
    names = [f"blocks.{l}.{h}" for l, h in pairs]
    out = parse_sites(names)
    assert len(out) == len(set(names))
    keys = [(s.layer, HOOKS.index(s.hook)) for s in out]
    assert keys == sorted(keys)


def test_resid_pre_before_post_within_layer():
    assert Site.parse("blocks.2.hook_resid_pre") < Site.parse("blocks.2.hook_attn_out") < Site.parse("blocks.2.hook_resid_post")
    assert Site.parse("blocks.1.hook_resid_post") < Site.parse("blocks.2.hook_resid_pre")


@given(st.text(max_size=40))
def test_garbage_never_parses_silently(text):
    try:
        s = Site.parse(text)
    except UnknownSiteError as exc:
        assert "\n" not in str(exc) and ";" in str(exc)
    else:
        assert s.name == text


@pytest.mark.parametrize(
    "bad", ["", "blocks", "blocks.1", "blocks.-1.hook_resid_post", "blocks.one.hook_resid_post",
            "block.1.hook_resid_post", "blocks.1.hook_resid", "blocks.1.mlp.hook_mlp_out", "blocks.１.hook_resid_post"]
)
def test_malformed_names_raise_one_line_errors(bad):
    with pytest.raises(UnknownSiteError) as info:
        Site.parse(bad)
    msg = str(info.value)
    assert "\n" not in msg and "blocks." in msg


def test_empty_request_and_wrong_type():
    with pytest.raises(UnknownSiteError, match="no sites"):
        parse_sites([])
    with pytest.raises(UnknownSiteError, match="must be a string"):
        Site.parse(3)  # type: ignore[arg-type]
    with pytest.raises(UnknownSiteError, match="unknown hook"):
        site(0, "resid_sideways")
