"""``medreg``: a thin command-line front on the flows and pipeline functions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help="MedRegInstruct builder: region-centric bilingual medical instruction data.")
console = Console(stderr=False)
err = Console(stderr=True)


@app.command()
def build(
    config: Path = typer.Argument(..., help="release config YAML (see examples/demo.yaml)"),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="output folder; the release goes to OUT/<name>-<version>"),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="run in-process without the Prefect flow"),
) -> None:
    """Build a release: ingest sources, make samples, validate, write shards + manifest + card + report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.release import prepare_sources, resolve_samples_root
    from schemas.config import load_config

    try:
        cfg = load_config(config)
        root = resolve_samples_root(cfg)
        total = sum(len(p.refs) for p in prepare_sources(cfg, root))
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with Progress(TextColumn("[bold]cases"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"), console=err) as prog:
        tid = prog.add_task("", total=total)

        def on_case(res) -> None:  # noqa: ANN001
            prog.update(tid, advance=1, description=f"{res.source}/{res.case_id}: {len(res.rows)} rows" + (" [red]error[/red]" if res.errors else ""))

        if no_prefect:
            from pipeline.release import build as build_plain

            release = build_plain(cfg, out, samples_root=root, progress=on_case)
            errors = []
        else:
            from flows.build import run_build

            summary = run_build(str(config), str(out), on_case)
            release = Path(summary["release"])
            errors = summary["errors"]
    _print_summary(Path(release))
    for e in errors:
        err.print(f"[yellow]case error:[/yellow] {e}")
    console.print(f"release: {release}")


def _print_summary(release: Path) -> None:
    import orjson

    m = orjson.loads((release / "manifest.json").read_bytes())
    c = m["counts"]
    t = Table(title=f"{m['name']} {m['version']}: {c['rows']} rows, {c['images']} images, {c['cases']} cases, {c['errors']} errors, {c['dropped']} dropped, {c['flagged']} flagged")
    for col in ("source", "licence", "cases", "errors", "rows"):
        t.add_column(col)
    by_src = c.get("by_source", {})
    for s in m["sources"]:
        t.add_row(s["name"], s["licence"], str(s["cases"]), str(s["errors"]), str(by_src.get(s["name"], 0)))
    console.print(t)
    t2 = Table(title="rows by split / task / language")
    for col in ("split", "task", "lang", "rows"):
        t2.add_column(col)
    agg: dict = {}
    for sh in m["shards"]:
        k = (sh["split"], sh["task"], sh["lang"])
        agg[k] = agg.get(k, 0) + sh["lines"]
    for (s, tk, lg), n in sorted(agg.items()):
        t2.add_row(s, tk, lg, str(n))
    console.print(t2)


@app.command()
def verify(release: Path = typer.Argument(..., help="a release folder (holding manifest.json)")) -> None:
    """Re-hash every shard, image and file against manifest.json; exit 1 on any mismatch."""
    from pipeline.shards import verify_release

    problems = verify_release(release)
    if problems:
        for p in problems:
            err.print(f"[red]MISMATCH[/red] {p}")
        err.print(f"{len(problems)} problem(s) in {release}")
        raise typer.Exit(1)
    console.print(f"OK: every file of {release} matches its manifest")


@app.command()
def sources() -> None:
    """List adapters (format families) and shipped source cards with modality and licence."""
    from sources.base import adapters, builtin_cards, load_card

    t = Table(title="adapters")
    for col in ("adapter", "formats", "description"):
        t.add_column(col)
    for name, cls in sorted(adapters().items()):
        t.add_row(name, ", ".join(cls.formats), cls.description)
    console.print(t)
    t = Table(title="source cards")
    for col in ("card", "adapter", "modality", "body region", "licence", "title"):
        t.add_column(col)
    for name, path in builtin_cards().items():
        try:
            c = load_card(str(path))
            t.add_row(name, c.adapter, c.modality, c.body_region or "", c.licence, c.title)
        except Exception as exc:  # noqa: BLE001
            t.add_row(name, "[red]invalid[/red]", "", "", "", str(exc)[:80])
    console.print(t)


@app.command()
def inspect(path: Path = typer.Argument(..., help="a file or folder to describe")) -> None:
    """Tell what a file or folder is (format, geometry, labels) so you can write a card for it."""
    try:
        from pipeline.inspect import format_inspection, inspect_path
    except ImportError:  # pragma: no cover
        err.print("inspect is not available in this build")
        raise typer.Exit(2) from None
    if not path.exists():
        err.print(f"[red]error:[/red] {path} does not exist")
        raise typer.Exit(2)
    console.print(format_inspection(inspect_path(path)))


@app.command()
def fetch_samples(
    dest: Optional[Path] = typer.Option(None, "--dest", help="folder (default: the user cache)"),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="base URL of a mirror laid out like ../shared/data"),
) -> None:
    """Download the pinned public sample files (sha256-verified)."""
    from pipeline.samples_data import default_cache_dir, download_samples

    target = dest or default_cache_dir()
    download_samples(target, None, mirror=mirror, progress=True)
    console.print(f"samples in {target}")


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
