"""``universality-tool cards DICT [DICT_B] --store S --out DIR``: the card page for any dictionaries.

One dictionary: the card of every live latent over the first ``--max-rows`` rows of the store.
Two: the dictionaries are matched on those rows (``--method``, activation view by default) and the
page shows pair cards for the best and worst matched pairs, both sides' cards and the unmatched live
latents of each side. ``--store-b`` reads B's activations from another store; both stores must hold
the same tokens in the same order (checked row by row). ``--model`` (a model folder or hub name, with
``--revision``) gives the tokenizer and, for residual sites, the direct logit effects; ``--tokenizer``
gives a tokenizer alone; without either the tokens show as ``#id``. ``--neuronpedia DIR`` also
exports A's cards in SAEDashboard's Neuronpedia layout (:mod:`universality.cards.export`).

Writes ``DIR/cards.html`` (self-contained) and ``DIR/cards.json`` (:class:`~universality.cards.card.CardSet`),
each atomically; a folder that holds other files than these is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from universality.activations import ActivationStore
from universality.cards.api import dictionary_card_set, match_card_set
from universality.cards.export import export_neuronpedia
from universality.cards.stats import CardOptions
from universality.cards.text import context_bounds, store_chunks, tensor_chunks, token_decoder
from universality.errors import ArtifactError, ConfigError, MatchError
from universality.sae import SAE
from universality.sites import as_site

__all__ = ["run_cards", "OUT_FILES"]

OUT_FILES = ("cards.html", "cards.json")


def _out_dir(out: str) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ArtifactError(f"--out {out!r} is a file", "name a folder for cards.html and cards.json")
    if p.is_dir():
        other = sorted(q.name for q in p.iterdir() if q.name not in OUT_FILES)
        if other:
            raise ArtifactError(f"--out {out!r} holds other files ({', '.join(other[:3])})",
                                "choose an empty or new folder (only cards.html and cards.json are replaced)")
    return p


def _rows(path: str, site: Any, max_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    store = ActivationStore.open(path)
    parts = list(store_chunks(store, site, max_rows=max_rows))
    if not parts:
        raise ArtifactError(f"activation store {path} holds no whole context of {site} within --max-rows {max_rows}",
                            "raise --max-rows or harvest into the store first")
    return (torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]))


def _text_tools(model: str | None, revision: str | None, tokenizer: str | None) -> tuple[Any, Any, str]:
    """(tokenizer or None, unembedding or None, description) from --model / --tokenizer."""
    if model:
        # import cost: model code loads only when a model is asked for
        import models
        from models.unembedding import unembedding

        adapter = models.load(model, revision=revision, device="cpu")
        return adapter.tokenizer, unembedding(adapter), f"model {model}" + (f"@{revision}" if revision else "")
    if tokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a tokenizer from {tokenizer!r} ({exc})",
                              "pass a folder with tokenizer.json (or a model folder with --model)") from None
        return tok, None, f"tokenizer {tokenizer}"
    return None, None, "no tokenizer (token ids shown as #id; pass --model or --tokenizer)"


def _paired(xa: torch.Tensor, xb: torch.Tensor, tok: torch.Tensor, ctx: torch.Tensor):
    """Row-aligned chunks of both dictionaries' inputs (whole contexts)."""
    for lo, hi in context_bounds(ctx):
        yield xa[lo:hi], xb[lo:hi], tok[lo:hi], ctx[lo:hi]


def run_cards(args: Any) -> dict[str, Any]:
    """Build and write the card page; returns the summary the CLI prints."""
    t0 = time.perf_counter()
    if args.max_rows < 2:
        raise ConfigError(f"--max-rows must be >= 2, got {args.max_rows}", "use e.g. --max-rows 16384")
    if args.n_shown < 1:
        raise ConfigError(f"--n-shown must be >= 1, got {args.n_shown}", "use e.g. --n-shown 40")
    if args.store_b and not args.b:
        raise ConfigError("--store-b needs a second dictionary", "pass DICT_B after DICT")
    out = _out_dir(args.out)
    a = SAE.load(args.a, device="cpu")
    b = SAE.load(args.b, device="cpu") if args.b else None
    if not (args.site or a.meta.get("site")):
        raise ConfigError("dictionary a records no site", "pass --site blocks.{layer}.hook_...")
    site_a = as_site(args.site or a.meta["site"])
    xa, tok, ctx = _rows(args.store, site_a, args.max_rows)
    if xa.shape[1] != a.d_in:
        raise MatchError(f"store {args.store} rows have width {xa.shape[1]} but dictionary a reads d_in={a.d_in}",
                         "pass the store (and --site) that the dictionary was trained on")
    tokenizer, unembed, text_from = _text_tools(args.model, args.revision, args.tokenizer)
    decode = token_decoder(tokenizer)
    text = {"source": f"store {args.store}", "site": site_a.name, "tokens_from": text_from, "max_rows": args.max_rows}
    opts = CardOptions(seed=args.seed)
    summary: dict[str, Any] = {"a": args.a, "b": args.b, "store": args.store, "store_b": args.store_b}
    if b is None:
        cs, _ = dictionary_card_set(a, tensor_chunks(xa, tok, ctx), decode, text, opts, unembed=unembed,
                                    site_is_residual=site_a.is_residual, label=Path(args.a).name, path=args.a,
                                    total_rows=len(tok))
        title = f"Feature cards: {Path(args.a).name}"
    else:
        # import cost: the matchers load only for the two-dictionary page
        from universality.match import match

        site_b = as_site(args.site_b or b.meta.get("site") or site_a.name)
        if args.store_b or site_b != site_a:
            xb, tok_b, ctx_b = _rows(args.store_b or args.store, site_b, args.max_rows)
            n = min(len(tok), len(tok_b))
            if not (torch.equal(tok[:n], tok_b[:n]) and len(tok) == len(tok_b)):
                raise MatchError("the two stores hold different tokens (token ids differ row by row)",
                                 "harvest both models on the same packed text, or compare with universality-tool match")
        else:
            xb = xa
        if xb.shape[1] != b.d_in:
            raise MatchError(f"rows for b have width {xb.shape[1]} but dictionary b reads d_in={b.d_in}",
                             "pass --store-b / --site-b for b's model")
        res = match(a, b, method=args.method, view=args.view, activations=(xa, xb) if xb is not xa else xa,
                    token_ids=(tok, tok) if xb is not xa else tok, device="cpu")
        unembed_b = unembed if args.model_b is None else _text_tools(args.model_b, args.revision_b, None)[1]
        cs = match_card_set(a, b, res.pairs, res.scores, _paired(xa, xb, tok, ctx), decode, {**text, "match": f"{args.method} on the {args.view} view"}, opts, n_shown=args.n_shown,
                            labels=(f"A ({Path(args.a).name})", f"B ({Path(args.b).name})"), paths=(args.a, args.b),
                            unembed=(unembed, unembed_b), residual=(site_a.is_residual, site_b.is_residual),
                            total_rows=len(tok))
        title = f"Pair cards: {Path(args.a).name} vs {Path(args.b).name}"
        summary.update(method=args.method, view=args.view, pairs=len(res), mean_score=res.mean_score)
    # import cost: the page writer lives with the reports
    from analysis.cards_page import write_card_page

    out.mkdir(parents=True, exist_ok=True)
    cs.save(out / "cards.json")
    page = write_card_page([(title, cs)], out / "cards.html", title=title)
    if args.neuronpedia:
        files = export_neuronpedia(cs, args.neuronpedia, model_id=args.neuronpedia_model or str(a.meta.get("model", "model")),
                                   sae_id=args.neuronpedia_set or Path(args.a).name, overwrite=args.overwrite_export)
        summary["neuronpedia"] = [str(f) for f in files]
    summary.update(out=str(out), page=str(page), page_bytes=page.stat().st_size, cards_a=len(cs.cards_a),
                   cards_b=len(cs.cards_b), pair_cards=len(cs.pairs), unmatched_a=len(cs.unmatched_a),
                   unmatched_b=len(cs.unmatched_b), tokens=cs.text["n_tokens"], seconds=round(time.perf_counter() - t0, 2))
    return summary
