"""``medreg expand``: draft new templates / glossary names with an LLM into a review file; accept by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

console = Console(stderr=False)
err = Console(stderr=True)

expand_app = typer.Typer(
    no_args_is_help=True,
    help="Draft new templates / glossary synonyms with an LLM into a review file; accept them by hand.",
)


@expand_app.command("templates")
def expand_templates_cmd(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="expansion config YAML (docs/evaluation.md, 'Expansion')")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="review file (default: the config's review_file)")
    ] = None,
) -> None:
    """Paraphrase template banks with an OpenAI-compatible LLM; valid proposals go to a review file."""
    _expand_run("templates", config, out)


@expand_app.command("glossary")
def expand_glossary_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="expansion config YAML")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="review file (default: the config's review_file)")
    ] = None,
) -> None:
    """Draft glossary names/synonyms with an OpenAI-compatible LLM into a review file."""
    _expand_run("glossary", config, out)


def _expand_run(kind: Literal["templates", "glossary"], config: Path, out: Path | None) -> None:
    from pipeline.evaluate.expand import ExpandError, load_expand_config, run_expand

    try:
        cfg = load_expand_config(config)
        res = run_expand(kind, cfg, review_path=out)
    except (ExpandError, ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"{res.proposed} proposal(s), {res.rejected} rejected by validation; LLM requests: {res.requests} "
        f"(cache hits: {res.cache_hits}) -> {res.review_path}"
    )
    console.print(
        f"review it, set accepted: true on the entries to keep, then run: medreg expand accept {res.review_path}"
    )


@expand_app.command("accept")
def expand_accept_cmd(
    review_file: Annotated[Path, typer.Argument(help="a review file written by `medreg expand templates|glossary`")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="apply without asking (the diff is still shown)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the diff only")] = False,
) -> None:
    """Show the unified diff of the accepted entries against the bank files, then write them."""
    from pipeline.evaluate.expand import ExpandError, plan_accept

    try:
        plan = plan_accept(review_file)
    except (ExpandError, ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for msg in plan.skipped:
        err.print(f"[yellow]skipped:[/yellow] {msg}")
    if not plan.changes:
        console.print("nothing to apply (no entry is marked accepted: true, or all were skipped)")
        return
    console.print(plan.diff(), markup=False, highlight=False)
    if dry_run:
        return
    if not yes and not typer.confirm(
        f"write {plan.count} accepted entr{'y' if plan.count == 1 else 'ies'} into {len(plan.changes)} file(s)?"
    ):
        console.print("not applied")
        raise typer.Exit(1)
    plan.apply()
    console.print(
        f"applied {plan.count} entr{'y' if plan.count == 1 else 'ies'} to: " + ", ".join(sorted(plan.changed_names()))
    )
