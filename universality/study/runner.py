"""Run a study end to end: build what the analyses need (cached), then write tables, figures and a report.

Outputs under the study's ``out_dir``::

    study.json            the config, its hash, status (running/complete/failed/interrupted), cache hits
    results.csv           tidy rows of every analysis (value, floor, skyline, normalised, note)
    tables/<analysis>__<table>.csv
    figures/*.png
    report.md, report.html (self-contained)
    cards.html            feature cards behind the figures (one self-contained page, linked from the
                          findings), when ``study.cards`` is on
    cache/<stage>-<hash>/ tokenizer, models, activation stores, SAEs, eval activations
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.cards_page import group_anchor, write_card_page
from analysis.report import Finding, Report, Section
from analysis.studies import analysis_module
from universality.io import atomic_write_text
from universality.progress import progress_bar
from universality.study.config import StudyConfig
from universality.study.pipeline import StudyContext
from universality.study.preflight import preflight
from universality.study.record import check_out_folder, claim, write_record

__all__ = ["run_study", "check_out_folder", "StudyOutcome"]

log = logging.getLogger("universality.study")


@dataclass(frozen=True)
class StudyOutcome:
    root: Path
    report_md: Path
    report_html: Path
    results_csv: Path
    seconds: float
    cache_hits: int
    cache_misses: int


def _csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))


def _setup_section(ctx: StudyContext, seconds: float) -> Section:
    cfg = ctx.cfg
    models = pd.DataFrame([{"model": m.name, "source": m.zoo or m.path,
                            "trained on": m.data if m.zoo is not None else "pretrained (not trained by this study)",
                            "family": ctx.adapter(m.name).family, "d_model": ctx.adapter(m.name).d_model,
                            "layers": ctx.adapter(m.name).n_layers, "revisions": ", ".join(ctx.revisions(m.name)),
                            "sites": ", ".join(cfg.sites_for(m.name))}
                           for m in cfg.models])
    d, dp = ctx.subset("D"), ctx.subset("D_prime")
    text = (f"Corpus {cfg.corpus.source}: D has {len(d.documents)} documents (hash {d.hash}); D' = {cfg.subset.kind} "
            f"subset with {len(dp.documents)} documents (hash {dp.hash})"
            + (", planted text family only in D \\ D'" if cfg.corpus.planted else "") + ". "
            f"Sites: {', '.join(cfg.sites)} (per model in the table). SAEs: {cfg.sae.describe()}, "
            f"{cfg.sae.steps} steps of {cfg.sae.batch_size} rows, seeds {list(cfg.sae.seeds)}. "
            f"Harvest: {cfg.harvest.train_tokens} tokens per cell; {len(ctx.eval_spans)} shared evaluation spans. "
            f"Run time {seconds:.0f} s; {len(ctx.cache.hits)} stages reused from the cache, {len(ctx.cache.misses)} built. "
            + _seed_copies_text(cfg))
    return Section("Setup", text, tables=[("Models", models)])


def _seed_copies_text(cfg: StudyConfig) -> str:
    """One sentence on the model-seed copies (or how to get them)."""
    if not any(m.zoo is not None for m in cfg.models):
        return "Model-seed skyline: not computed (no zoo model, so no model-seed copy can be trained)."
    if not cfg.model_seed_skyline:
        return ("Model-seed skyline: off (study.model_seed_skyline=true trains a model-seed copy of each zoo model "
                "for it).")
    copies = [(m, cfg.seed_copy(m.name)) for m in cfg.models]
    listed = ", ".join(f"{c.name} (copy of {m.name}, model seed {c.overrides['seed']})" for m, c in copies if c is not None)
    return (f"Model-seed skyline: on; model-seed copies (same preset and data, another model seed; trained where an "
            f"analysis reads them): {listed}.")


def _card_page(root: Path, results: list) -> tuple[Section, list[str | Finding]]:
    """Write ``cards.html`` from the analyses' card sections; return the report's card section and the
    findings with links to the groups behind them."""
    start = time.perf_counter()
    entries = [(r, cs) for r in results for cs in r.cards]
    page = write_card_page([(f"{r.title}: {cs.title}", cs.cards) for r, cs in entries], root / "cards.html",
                           title="Feature cards behind the study's figures")
    seconds = time.perf_counter() - start
    links: list[tuple[str, str]] = []
    section_links: list[list[tuple[str, str]]] = []
    for i, (_, cs) in enumerate(entries):
        own = [(group, f"{page.name}#{group_anchor(i, group)}") for group in cs.cards.groups]
        section_links.append(own)
        links += [(f"{cs.title}: {group}", href) for group, href in own]
    by_finding: dict[tuple[str, int], list[tuple[str, str]]] = {}
    first: dict[str, list[tuple[str, str]]] = {}
    for (r, cs), own in zip(entries, section_links):
        first.setdefault(r.name, own)  # a finding no section claims links to its analysis's first section
        for f in cs.findings:
            by_finding.setdefault((r.name, f), []).extend(own)
    findings: list[str | Finding] = [Finding(f, tuple(by_finding.get((r.name, j), first.get(r.name, ()))))
                                     for r in results for j, f in enumerate(r.findings)]
    n_items = sum(len(cs.cards.cards_a) + len(cs.cards.cards_b) + len(cs.cards.pairs) + len(cs.cards.lineage)
                  for _, cs in entries)
    text = (f"{page.name}: {len(entries)} sections, {n_items} cards, pair cards and lineage strips "
            f"({page.stat().st_size / 1e6:.1f} MB, self-contained, 50 cards per page rendered on demand; built in "
            f"{seconds:.1f} s after the analyses' card passes). Each card shows a latent's strongest contexts with "
            "the activating tokens highlighted, samples from lower activation quantiles, firing density, an "
            "activation histogram, the share of its activation that token identity alone explains, and the "
            "tokens its decoder direction promotes and suppresses (residual sites). Pair cards put two matched "
            "latents side by side on the same tokens, with the contexts where only one of them fires; lineage "
            "strips follow one chain over the checkpoints. The page embeds its data as JSON (card-data); "
            "universality-tool cards writes the same page, and cards.json, for any dictionaries.")
    return Section("Feature cards", text, links=links), findings


def run_study(cfg: StudyConfig, out_dir: str | Path | None = None, progress: bool = True) -> StudyOutcome:
    """Run every analysis of ``cfg`` and write the results table, figures and report.

    The folder is claimed first (:func:`universality.study.record.claim`): ``study.json`` says
    ``running`` before any stage is built, so an interrupted or failed run is resumed by running the
    same config again (finished stages are reused from ``cache/``).
    """
    root = Path(out_dir or cfg.out_dir)
    preflight(cfg)
    with claim(root, cfg):
        outcome = _run(cfg, root, progress)
        write_record(root, cfg, "complete", cache_hits=outcome.cache_hits, cache_misses=outcome.cache_misses,
                     seconds=round(outcome.seconds, 1))
    return outcome


def _run(cfg: StudyConfig, root: Path, progress: bool) -> StudyOutcome:
    start = time.perf_counter()
    ctx = StudyContext(cfg, root)
    figures = root / "figures"
    results = []
    for name in progress_bar(cfg.analyses, f"study {cfg.name}", progress=progress):
        log.info("analysis %s", name)
        results.append(analysis_module(name).run(ctx, figures))
    tidy = pd.DataFrame([row for r in results for row in r.tidy])
    results_csv = _csv(tidy, root / "results.csv")
    for r in results:
        for tname, table in r.tables.items():
            _csv(table, root / "tables" / f"{r.name}__{tname.replace('/', '_')}.csv")
    seconds = time.perf_counter() - start
    sections = [_setup_section(ctx, seconds)]
    for r in results:
        shown = [(k.replace("_", " "), v) for k, v in r.tables.items() if not k.startswith("lineage_chains")]
        sections.append(Section(r.title, r.text, tables=shown, figures=r.figures))
    findings: list[str | Finding] = [f for r in results for f in r.findings]
    if any(r.cards for r in results):
        card_section, findings = _card_page(root, results)
        sections.append(card_section)
    report = Report(f"Study: {cfg.name}", findings, sections,
                    footer="Every similarity is reported with its floor (token-shuffled or random dictionary) and its "
                           "skyline; normalised = (x - floor) / (skyline - floor), left blank where skyline - floor "
                           "is too small. Comparisons within a model use the SAE-seed skyline (skyline, normalised); "
                           "comparisons across models give one value per skyline: skyline_sae_seed / "
                           "normalised_sae_seed (two SAE seeds on one model) and skyline_model_seed / "
                           "normalised_model_seed (SAEs on two models pre-trained with different seeds, Wang et al. "
                           "2024). The note column flags values above a skyline, dead latents left out of MPPC and "
                           "skylines not computed; value_meaning says what a value is (GW: lower is closer). "
                           "Tables in tables/, tidy rows in results.csv.")
    md, page = report.write(root)
    return StudyOutcome(root, md, page, results_csv, seconds, len(ctx.cache.hits), len(ctx.cache.misses))
