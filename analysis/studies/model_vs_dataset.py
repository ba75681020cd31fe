"""Model features versus dataset features: what SAEs find in data without the trained model's computation.

StefanHex's question ("Are the features learned by the model the same as the features learned by SAEs?"):
are SAE features a property of the model, or of the activations' distribution? The SAEs of the trained
model at each site are compared with SAEs of the same spec trained on three controls:

- **init**: the same model at initialisation (the step-0 checkpoint), on the same text;
- **gaussian**: Gaussian rows with the trained activations' mean and covariance
  (:class:`~universality.activations.controls.GaussianSource`): the second moments without any sparse
  structure;
- **embedding**: the input-embedding row of each harvested token
  (:class:`~universality.activations.controls.EmbeddingSource`; residual sites of the embedding's width):
  token identity alone.

For each control, the share of the trained SAE's features it *finds*:

- activation view (init and embedding, defined on the same evaluation tokens): live trained features
  whose best Pearson correlation with the control SAE's codes is at least ``match.corr_threshold``;
  floor: the control's codes shuffled over tokens;
- decoder view (every control; the only one for the Gaussian, which has no tokens): trained features
  whose best decoder cosine to the control's dictionary is at least :data:`COS_THRESHOLD`; floor: as many
  random unit directions (isotropic; ``floor_cov``: drawn with the activations' covariance); with the
  mean of those best cosines (MMCS, Sharkey et al. 2022), which stays informative where few features
  reach the threshold (small, briefly trained dictionaries).

Skyline: the same share between two seeds of the trained model's SAE. Composite features (the text's
"naive test"): the share of one dictionary's decoder rows that are non-negative sums of two rows of the
other at cosine >= :data:`COMPOSITE_COS` while no single row reaches it
(:func:`universality.match.composites.composite_features`), trained against each control in both
directions; reference: two trained seeds; floor: random unit rows.

Control SAEs train with the study's seeds plus :data:`SEED_OFFSET`, and every comparison reads the trained
model's SAE seed :data:`~analysis.studies.common.A_SEED` against another seed, so no two compared
dictionaries share an initialisation.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import torch

from analysis import plots
from analysis.studies.common import A_SEED, B_SEED, AnalysisResult, Codebook, dead_note, norm_row, per_feature_mppc
from models.unembedding import input_embedding
from universality.activations.controls import EmbeddingSource, GaussianSource, fit_gaussian, store_token_ids
from universality.errors import ConfigError
from universality.match import encode_codes
from universality.match.baselines import shuffle_tokens
from universality.match.composites import composite_features, composite_floor, random_rows
from universality.match.views import decoder_directions
from universality.study.pipeline import Cell
from universality.study.stages import train_on_source

NAME = "model_vs_dataset"
#: control SAEs are trained with the study's SAE seeds plus this (different initial weights from the trained model's)
SEED_OFFSET = 1000
#: decoder view: a trained feature is found when a control decoder row has at least this cosine to it
COS_THRESHOLD = 0.7
#: a decoder row is a composite when two rows of the other dictionary explain it at this cosine and one does not
COMPOSITE_COS = 0.9
CONTROLS = ("init", "gaussian", "embedding")
ACT_VIEW, DEC_VIEW = "activations", "decoder"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _cells(ctx, model: str) -> tuple[Cell, Cell]:
    revs = ctx.revisions(model)
    if len(revs) < 2 or revs[0] != "step0":
        raise ConfigError(f"{NAME} needs model {model!r} at step0 and a trained checkpoint, got revisions {revs}",
                          f"set checkpoints: all (or a list [step0, ...]) for {model}")
    return Cell(model, revs[-1], "D"), Cell(model, revs[0], "D")


def _gaussian_saes(ctx, cell: Cell, store) -> dict[str, list]:
    label = f"gaussian fit to {cell.model}@{cell.revision} on {cell.data}"

    def source():
        fits = {s: fit_gaussian(store, s) for s in store.sites}
        return GaussianSource(fits, batch_size=ctx.cfg.sae.batch_size, seed=ctx.cfg.seed, label=label)

    return train_on_source(ctx.cfg, ctx.cache, "control-saes", {"control": "gaussian", "store": store.path.parent.name},
                           source, {s: store.width(s) for s in store.sites}, SEED_OFFSET,
                           {"model": None, "dataset": label}, label, min(ctx.cfg.sae.init_rows, store.n_rows))


def _embedding_saes(ctx, cell: Cell, store, E: torch.Tensor, sites: list[str]) -> dict[str, list]:
    if not sites:
        return {}
    label = f"input embedding of {cell.model}@{cell.revision} at the tokens of {cell.data}"

    def source():
        return EmbeddingSource(E, store_token_ids(store), sites, batch_size=ctx.cfg.sae.batch_size, seed=ctx.cfg.seed,
                               label=label)

    return train_on_source(ctx.cfg, ctx.cache, "control-saes",
                           {"control": "embedding", "store": store.path.parent.name, "embedding": _digest(E)},
                           source, {s: int(E.shape[1]) for s in sites}, SEED_OFFSET,
                           {"model": None, "dataset": label}, label, min(ctx.cfg.sae.init_rows, store.n_rows))


def _act_found(ca, cb, thr: float) -> float:
    ra, _ = per_feature_mppc(ca, cb)
    return float((ra >= thr).mean()) if len(ra) else float("nan")


def _best_cos(Wa: torch.Tensor, Wb: torch.Tensor) -> torch.Tensor:
    """Per row of ``Wa``: the largest cosine to a row of ``Wb``."""
    return (decoder_directions(Wa) @ decoder_directions(Wb).T).max(dim=1).values


def _dec_found(Wa: torch.Tensor, Wb: torch.Tensor) -> float:
    return float((_best_cos(Wa, Wb) >= COS_THRESHOLD).float().mean())


def _mmcs(Wa: torch.Tensor, Wb: torch.Tensor) -> float:
    return float(_best_cos(Wa, Wb).mean())


def run(ctx, figures_dir) -> AnalysisResult:
    model = ctx.cfg.models[0].name
    trained, init = _cells(ctx, model)
    book = Codebook(ctx)
    thr = ctx.cfg.match.corr_threshold
    seed = ctx.cfg.seed
    store = ctx.store(trained)
    E = input_embedding(ctx.adapter_at(model, trained.revision))
    typed = {s.name: s for s in ctx.sites_of(model)}
    emb_sites = [s for s in store.sites if E is not None and typed[s].is_residual and store.width(s) == E.shape[1]]
    gauss = _gaussian_saes(ctx, trained, store)
    emb = _embedding_saes(ctx, trained, store, E, emb_sites)
    eval_tok = book.token_ids(model, trained.revision)
    res = AnalysisResult(NAME, f"Model features versus dataset features in {model}")
    rows, found, comps = [], [], []
    for site in store.sites:
        own = ctx.saes(trained)[site]
        A, B = own[A_SEED], own[B_SEED]
        controls = {"init": ctx.saes(init)[site][B_SEED], "gaussian": gauss[site][B_SEED]}
        if site in emb:
            controls["embedding"] = emb[site][B_SEED]
        ca, cb = book.codes(trained, site, A_SEED), book.codes(trained, site, B_SEED)
        act_sky = _act_found(ca, cb, thr)
        dec_sky, mmcs_sky = _dec_found(A.W_dec, B.W_dec), _mmcs(A.W_dec, B.W_dec)
        cov = fit_gaussian(store, site).cov
        for name, sae in controls.items():
            if name == "init":
                cx = book.codes(init, site, B_SEED)
            elif name == "embedding":
                cx = encode_codes(sae, E[eval_tok.long()].float(), token_ids=eval_tok)
            else:
                cx = None
            if cx is not None:
                value, floor = _act_found(ca, cx, thr), _act_found(ca, shuffle_tokens(cx, seed=seed), thr)
                found.append({"site": site, "control": name, "view": ACT_VIEW, "found": value, "floor": floor,
                              "floor_cov": float("nan"), "skyline": act_sky, "mmcs": float("nan"),
                              "mmcs_floor": float("nan"), "mmcs_skyline": float("nan")})
                rows.append(norm_row(NAME, f"{site} trained vs {name}", "found share (activations)", value, floor, act_sky,
                                     site=site, control=name, view=ACT_VIEW, note=dead_note(ca, cx, "trained", name),
                                     value_meaning=f"share of the trained SAE's live features whose best correlation with "
                                                   f"the {name} SAE's codes on the evaluation tokens is >= {thr}"))
            n, d = sae.W_dec.shape
            value = _dec_found(A.W_dec, sae.W_dec)
            rand = random_rows(n, d, seed=seed)
            floor = _dec_found(A.W_dec, rand)
            floor_cov = _dec_found(A.W_dec, random_rows(n, d, seed=seed, cov=cov))
            mm, mm_floor = _mmcs(A.W_dec, sae.W_dec), _mmcs(A.W_dec, rand)
            found.append({"site": site, "control": name, "view": DEC_VIEW, "found": value, "floor": floor,
                          "floor_cov": floor_cov, "skyline": dec_sky, "mmcs": mm, "mmcs_floor": mm_floor,
                          "mmcs_skyline": mmcs_sky})
            rows.append(norm_row(NAME, f"{site} trained vs {name}", "decoder mmcs", mm, mm_floor, mmcs_sky,
                                 site=site, control=name, view=DEC_VIEW,
                                 value_meaning=f"mean over the trained SAE's features of the best decoder cosine to the "
                                               f"{name} SAE (MMCS; floor: as many random unit directions)"))
            rows.append(norm_row(NAME, f"{site} trained vs {name}", "found share (decoder)", value, floor, dec_sky,
                                 site=site, control=name, view=DEC_VIEW, floor_cov=floor_cov,
                                 value_meaning=f"share of the trained SAE's features with a {name} decoder row at cosine "
                                               f">= {COS_THRESHOLD}"))
        comps += _composites(A.W_dec, B.W_dec, {k: v.W_dec for k, v in controls.items()}, site, seed)
    comp = pd.DataFrame(comps)
    for _, r in comp.iterrows():
        rows.append(norm_row(NAME, f"{r['site']} {r['direction']}", "composite share", r["composite"], r["floor"],
                             r["reference"], site=r["site"], control=r["control"], view=DEC_VIEW,
                             note="skyline: the same share between two trained seeds (a reference level, not an upper bound)",
                             value_meaning=f"share of decoder rows that are non-negative sums of two rows of the other "
                                           f"dictionary at cosine >= {COMPOSITE_COS} (no single row reaches it)"))
    table = pd.DataFrame(found)
    res.tables["found"] = table
    res.tables["composites"] = comp
    res.tidy += rows
    fig = table.assign(control=[f"{s}: {c}" if table["site"].nunique() > 1 else c for s, c in zip(table["site"], table["control"])])
    res.figures.append(("Share of the trained model's features found by each control",
                        plots.found_fractions(fig, figures_dir / f"{NAME}.png",
                                              f"{model}: trained-model features found by SAEs on controls")))
    res.findings += _findings(table, comp, thr)
    res.text = (f"SAEs of the trained model ({trained.revision}) against SAEs of the same spec on three controls: the model "
                f"at initialisation ({init.revision}), Gaussian rows with the trained activations' mean and covariance, and "
                "the input-embedding row of each harvested token (residual sites of the embedding's width). Activation "
                f"view (init, embedding; same evaluation tokens): share of the trained SAE's live features with a partner "
                f"at correlation >= {thr}, floor: token-shuffled control codes. Decoder view (all controls): share with a "
                f"control decoder row at cosine >= {COS_THRESHOLD}, floor: as many random unit directions (floor_cov: "
                "with the activations' covariance). Skyline: two seeds of the trained model's SAE. Composites: share of "
                f"decoder rows that are non-negative sums of two rows of the other dictionary at cosine >= {COMPOSITE_COS} "
                f"while no single row reaches it. Control SAEs use the study's seeds plus {SEED_OFFSET}.")
    return res


def _composites(WA, WB, controls: dict, site: str, seed: int) -> list[dict]:
    """Composite shares, trained seed A against each control in both directions, with the seed reference and floor."""
    ref = (composite_features(WA, WB, COMPOSITE_COS).fraction + composite_features(WB, WA, COMPOSITE_COS).fraction) / 2
    out = []
    for name, W in controls.items():
        for direction, Wx, Wy in ((f"trained as sums of {name}", WA, W), (f"{name} as sums of trained", W, WA)):
            res = composite_features(Wx, Wy, COMPOSITE_COS)
            floor = composite_floor(Wy, n=int(Wx.shape[0]), threshold=COMPOSITE_COS, seed=seed).fraction
            out.append({"site": site, "control": name, "direction": direction, "composite": res.fraction,
                        "explained": res.explained_fraction, "floor": floor, "reference": ref})
    return out


def _findings(table: pd.DataFrame, comp: pd.DataFrame, thr: float) -> list[str]:
    out = []
    for site, t in table.groupby("site", sort=False):
        parts = []
        for _, r in t.iterrows():
            line = f"{r['control']} {r['found']:.3f} ({r['view']}; floor {r['floor']:.3f}, skyline {r['skyline']:.3f}"
            if r["view"] == DEC_VIEW:
                line += f"; MMCS {r['mmcs']:.3f}, floor {r['mmcs_floor']:.3f}, skyline {r['mmcs_skyline']:.3f}"
            parts.append(line + ")")
        out.append(f"{site}: share of the trained model's features found (correlation >= {thr} / decoder cosine >= "
                   f"{COS_THRESHOLD}): " + "; ".join(parts) + ".")
    for site, c in comp.groupby("site", sort=False):
        top = c.sort_values("composite", ascending=False).iloc[0]
        out.append(f"{site}: composite features (two-row sums at cosine >= {COMPOSITE_COS}): at most {top['composite']:.3f} "
                   f"({top['direction']}; random-row floor {top['floor']:.3f}); between two trained seeds "
                   f"{top['reference']:.3f}.")
    return out
