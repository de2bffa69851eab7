"""``medreg translate``: translate a report-grounded source's sentences into the other language (glossary terms
fixed, replies checked), into a review file; ``medreg translate accept`` merges the accepted entries into the
accepted-translations file a card points to (pipeline/evaluate/translate.py has the whole workflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pipeline.evaluate.translate import TranslateConfig, TranslateResult, accept_translations, run_translate

console = Console()
err = Console(stderr=True)
translate_app = typer.Typer(
    no_args_is_help=True, help="Translate report sentences (glossary terms fixed) into a review file; accept by hand.")


def source_sentences(card_ref: str, root: Path | None = None, samples_root: Path | None = None,
                     translations: Path | None = None) -> tuple[Any, list[tuple[str, str]]]:
    """The report adapter of a card (``translations``: another accepted-translations file than the card's) and
    the distinct (language, sentence) of its cases."""
    from sources.base import get_adapter, load_card
    from sources.reports import ReportAdapter

    card = load_card(card_ref)
    if card.report is None:
        raise ValueError(f"card {card.name} has no `report:` section: not a report-grounded source")
    if translations is not None:
        card = card.model_copy(update={"report": card.report.model_copy(
            update={"translations": str(Path(translations).resolve()) if Path(translations).is_file() else None})})
    adapter = get_adapter(card, root if root is not None else card.resolve_root(samples_root))
    if not isinstance(adapter, ReportAdapter):
        raise ValueError(f"adapter {card.adapter} of card {card.name} does not read report sentences")
    return adapter, list(dict.fromkeys(s for ref in adapter.discover() for s in adapter.report_sentences(ref)))


def translate_source(card_ref: str, cfg: TranslateConfig, *, root: Path | None = None,
                     review_path: Path | None = None, client: Any = None,
                     translations: Path | None = None) -> TranslateResult:
    """Translate the sentences of a source not yet in its accepted-translations file (the card's, or
    ``translations``); write the review file."""
    from pipeline.language.glossary import load_glossary

    adapter, texts = source_sentences(card_ref, root, translations=translations)
    return run_translate(texts, cfg, load_glossary(), source_name=adapter.card.name,
                         review_path=review_path, client=client, accepted=adapter.accepted())


@translate_app.command("run")
def translate_run_cmd(
    card: Annotated[str, typer.Option("--card", help="a shipped card name or a card YAML with a report: section")],
    config: Annotated[Path, typer.Option("--config", "-c", help="translation config YAML (llm, cache_dir, ...)")],
    root: Annotated[Path | None, typer.Option("--root", help="the source's data folder (default: card root)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="review file (default: config review_file)")] = None,
    translations: Annotated[Path | None, typer.Option(
        "--translations", help="accepted-translations file whose sentences are skipped (default: the card's)")] = None,
) -> None:
    """Translate the source's report sentences through an OpenAI-compatible LLM into a review file."""
    from pipeline.evaluate.expand import ExpandError
    from pipeline.evaluate.translate import load_translate_config

    try:
        res = translate_source(card, load_translate_config(config), root=root, review_path=out,
                               translations=translations)
    except (ExpandError, ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{res.proposed} translation(s) proposed, {res.rejected} rejected by the checks; LLM requests: "
                  f"{res.requests} (cache hits: {res.cache_hits}) -> {res.review_path}")
    console.print(f"review it, set accepted: true, then: medreg translate accept {res.review_path} "
                  "--into ACCEPTED.yaml")


@translate_app.command("accept")
def translate_accept_cmd(
    review_file: Annotated[Path, typer.Argument(help="a review file written by `medreg translate run`")],
    into: Annotated[Path, typer.Option("--into", help="the accepted-translations file (created or updated)")],
) -> None:
    """Merge the entries marked accepted: true (checked again) into the accepted-translations file."""
    from pipeline.evaluate.expand import ExpandError

    try:
        changed, skipped = accept_translations(review_file, into)
    except (ExpandError, ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for msg in skipped:
        err.print(f"[yellow]skipped:[/yellow] {msg}")
    console.print(f"{changed} translation(s) added or changed in {into}; point the card's report.translations at it")
