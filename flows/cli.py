"""``medreg``: a thin command-line front on the flows and pipeline functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flows.expand_cli import expand_app
from flows.translate import translate_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="MedRegInstruct builder: region-centric bilingual medical instruction data.",
)
console = Console(stderr=False)
err = Console(stderr=True)


@app.command()
def build(
    config: Annotated[Path, typer.Argument(help="release config YAML (see examples/demo.yaml)")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="output folder; the release goes to OUT/<name>-<version>")
    ] = Path("out"),
    no_prefect: Annotated[
        bool, typer.Option("--no-prefect", help="run in-process (worker processes) without Prefect")
    ] = False,
    wait: Annotated[
        float, typer.Option("--wait", help="seconds to wait for another build into the same --out to end")
    ] = 0.0,
) -> None:
    """Build a release: ingest sources, make samples, validate, write shards + manifest + card + report."""
    if no_prefect:  # the worker processes' fork server imports the pipeline while this process does
        from pipeline.release.executors import start_worker_server, wants_worker_pool

        if wants_worker_pool(config):
            start_worker_server()
    from rich.markup import escape

    from pipeline.core.environment import EnvironmentFailure
    from pipeline.release.driver import BuildFailure
    from pipeline.release.publish import BuildRefused
    from schemas.config import load_config

    try:
        load_config(config)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    try:
        with _ProgressBar() as on_event:
            if no_prefect:
                from flows.run import run_build as run_local

                res = run_local(config, out, progress=on_event, wait_seconds=wait)
                release, errors = res.release, [e.one_line() for e in res.errors]
            else:
                release, errors = _prefect_build(config, out, on_event, wait)
    except (BuildRefused, EnvironmentFailure, BuildFailure) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    _print_summary(release)
    print_case_errors(errors)
    console.print(f"release: {release}", markup=False, highlight=False)


def _prefect_build(config: Path, out: Path, on_event: Any, wait: float) -> tuple[Path, list[str]]:
    """The flow build. The temporary server is launched before Prefect is imported here: its boot and that
    import (seconds each) overlap."""
    from flows.server import TemporaryServer

    def say(message: str) -> None:
        err.print(message, markup=False)

    early = TemporaryServer(say=say)
    early.start_early()
    try:
        from flows.build import run_build

        summary = run_build(config, out, on_event, wait_seconds=wait, say=say, early=early)
    finally:
        early.stop()
    return Path(summary["release"]), summary["errors"]


def print_case_errors(errors: list[str]) -> None:
    """One line per case error; the text is data, never Rich markup (a path like ``cases[/x].jpg`` would be
    read as a closing tag and crash the console)."""
    from rich.markup import escape

    for e in errors:
        err.print(f"[yellow]case error:[/yellow] {escape(e)}", highlight=False)


class _ProgressBar:
    """A rich progress bar over cases (cached cases count at once), with ETA."""

    def __enter__(self) -> Any:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.prog = Progress(
            TextColumn("[bold]cases"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=err,
        )
        self.prog.__enter__()
        self.tid = self.prog.add_task("", total=None)
        return self.on_event

    def on_event(self, event: str, payload: Any) -> None:
        from rich.markup import escape

        if event == "planned":
            self.prog.update(self.tid, total=payload)
        elif event in ("built", "cached") and payload is not None:
            flag = " [red]error[/red]" if payload.errors else ""
            what = "cached" if event == "cached" else f"{payload.rows} rows"
            self.prog.update(
                self.tid, advance=1, description=f"{escape(payload.source)}/{escape(payload.case_id)}: {what}{flag}"
            )
        elif event == "validated":
            self.prog.update(self.tid, description="validating")

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)


def _print_summary(release: Path) -> None:
    import orjson

    m = orjson.loads((release / "manifest.json").read_bytes())
    c = m["counts"]
    t = Table(
        title=f"{m['name']} {m['version']}: {c['rows']} rows, {c['images']} images, {c['cases']} cases, "
        f"{c['errors']} errors, {c['dropped']} dropped, {c['flagged']} flagged"
    )
    for col in ("source", "licence", "cases", "errors", "rows"):
        t.add_column(col)
    by_src = c.get("by_source", {})
    for s in m["sources"]:
        t.add_row(s["name"], s["licence"], str(s["cases"]), str(s["errors"]), str(by_src.get(s["name"], 0)))
    for e in (m.get("licences") or {}).get("excluded", []):  # left out by the config's licence filter
        t.add_row(Text(e["name"]), Text(e["licence"]), Text("excluded: " + e["reason"]), "", "")
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
def verify(
    release: Annotated[Path, typer.Argument(help="a release folder (holding manifest.json)")],
) -> None:
    """Re-hash every shard, image and file against manifest.json; exit 1 on any mismatch."""
    from pipeline.release.verify import verify_release

    problems = verify_release(release)
    if problems:
        for p in problems:
            err.print(f"[red]MISMATCH[/red] {p}")
        err.print(f"{len(problems)} problem(s) in {release}")
        raise typer.Exit(1)
    console.print(f"OK: every file of {release} matches its manifest")


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="the older release folder (holding manifest.json)")],
    new: Annotated[Path, typer.Argument(help="the newer release folder")],
    json_out: Annotated[bool, typer.Option("--json", help="print the diff as JSON (for tools), not tables")] = False,
    full: Annotated[bool, typer.Option("--full", help="also the table by source x task x lang x split")] = False,
    examples: Annotated[int, typer.Option("--examples", help="ids / images listed per kind of change")] = 10,
) -> None:
    """What changed between two releases: rows added/removed/changed by source, task, language and split,
    images, regions per term, config keys, sources and licences, validation verdicts, patients' splits."""
    from pipeline.versions.diff import diff_releases

    try:
        d = diff_releases(old, new, examples=examples)
    except (ValueError, FileNotFoundError) as exc:
        from rich.markup import escape

        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if json_out:
        import orjson

        sys.stdout.write(orjson.dumps(d, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
        return
    from flows.diff_view import print_diff

    print_diff(d, console, full=full)


@app.command()
def validators() -> None:
    """List the registered validators (built-ins and medreg.validators entry points)."""
    from pipeline.validate.registry import registered

    t = Table(title="validators")
    for col in ("validator", "level", "model/GPU", "config", "from", "description"):
        t.add_column(col)
    for name, info in registered().items():
        t.add_row(
            *(
                Text(x)
                for x in (
                    name,
                    info.level,
                    "yes" if info.needs_model else "no",
                    info.config_model.__name__,
                    info.origin,
                    info.description,
                )
            )
        )
    console.print(t)


@app.command()
def sources(
    layout: Annotated[str | None, typer.Option("--layout", help="print the layout keys of this adapter")] = None,
) -> None:
    """List adapters (format families) and shipped source cards with modality and licence."""
    from sources.base import adapters, builtin_cards, load_card

    if layout is not None:
        from sources.layouts import layout_markdown

        table = adapters()
        if layout not in table:
            err.print(f"[red]error:[/red] no adapter {layout!r}; registered: {', '.join(sorted(table))}")
            raise typer.Exit(2)
        text = layout_markdown(layout, table[layout].layout_model)
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return

    t = Table(title="adapters")
    for col in ("adapter", "formats", "description"):
        t.add_column(col)
    for name, cls in sorted(adapters().items()):
        t.add_row(Text(name), Text(", ".join(cls.formats)), Text(cls.description))
    console.print(t)
    t = Table(title="source cards")
    for col in ("card", "adapter", "modality", "body region", "licence", "title"):
        t.add_column(col)
    for name, path in builtin_cards().items():
        try:
            c = load_card(str(path))
            t.add_row(*(Text(x) for x in (name, c.adapter, c.modality, c.body_region or "", c.licence, c.title)))
        except Exception as exc:
            t.add_row(name, "[red]invalid[/red]", "", "", "", str(exc)[:80])
    console.print(t)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="a file or folder to describe")],
    card: Annotated[str | None, typer.Option("--card", help="also check this card (shipped name or YAML path)")] = None,
) -> None:
    """Tell what a file or folder is (format, geometry, labels) so you can write a card for it."""
    from pipeline.ingest.inspect import format_inspection, inspect_path

    if not path.exists():
        err.print(f"[red]error:[/red] {path} does not exist")
        raise typer.Exit(2)
    console.print(format_inspection(inspect_path(path)), markup=False, highlight=False)
    if card is not None:
        from sources.base import card_problems

        problems = card_problems(card)
        for problem in problems:
            console.print(f"card problem: {problem}", markup=False, highlight=False, soft_wrap=True)
        if not problems:
            console.print(f"card {card}: loads; every label maps to a known term", markup=False, soft_wrap=True)


@app.command()
def fetch_samples(
    dest: Annotated[Path | None, typer.Option("--dest", help="folder (default: the user cache)")] = None,
    mirror: Annotated[
        str | None, typer.Option("--mirror", help="base URL of a mirror laid out like ../shared/data")
    ] = None,
) -> None:
    """Download the pinned public sample files (sha256-verified)."""
    from flows.samples import default_cache_dir, download_samples

    target = dest or default_cache_dir()
    download_samples(target, None, mirror=mirror, progress=True)
    console.print(f"samples in {target}")


# ----------------------------------------------------------------------------------------- eval / export / expand


@app.command("export")
def export_cmd(
    release: Annotated[Path, typer.Argument(help="a release folder (holding manifest.json)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="internvl-meta | llava")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="internvl-meta: the meta JSON file; llava: a .json (one JSON list, what LLaVA's train.py "
            "reads), a folder (one <split>.json list per split), or a .jsonl (not for train.py)",
        ),
    ],
    split: Annotated[
        list[str] | None,
        typer.Option("--split", "-s", help="split(s) to export (repeatable; default: train); 'all' for every split"),
    ] = None,
    root_prefix: Annotated[
        str | None,
        typer.Option(
            "--root-prefix",
            help="internvl-meta: where the release folder lives on the training machine "
            "(default: its absolute path here)",
        ),
    ] = None,
    repeat_time: Annotated[
        float,
        typer.Option(
            "--repeat-time",
            help="internvl-meta: repeat_time of every entry (<1 keeps that fraction; >1 must be an integer)",
        ),
    ] = 1.0,
    data_augment: Annotated[
        bool, typer.Option("--data-augment/--no-data-augment", help="internvl-meta: data_augment flag")
    ] = False,
    max_dynamic_patch: Annotated[
        int | None, typer.Option("--max-dynamic-patch", help="internvl-meta: per-dataset max_dynamic_patch")
    ] = None,
    system: Annotated[
        str, typer.Option("--system", help="llava: fold system prompts into the first question, or drop them")
    ] = "fold",
) -> None:
    """Export a release for a trainer: InternVL's / MedRegA's --meta_path file (with base_prompt) or LLaVA data."""
    import orjson

    from pipeline.core.atomic import write_bytes_atomic
    from pipeline.release.export import internvl_meta, write_llava

    split = split or ["train"]
    splits = None if "all" in split else list(split)
    try:
        if fmt == "internvl-meta":
            meta = internvl_meta(
                release,
                root_prefix,
                splits=splits,
                repeat_time=repeat_time,
                data_augment=data_augment,
                max_dynamic_patch=max_dynamic_patch,
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(out, orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
            total = sum(e["length"] for e in meta.values())
            console.print(f"InternVL meta: {len(meta)} dataset entries, {total} rows -> {out}")
        elif fmt == "llava":
            if system not in ("fold", "drop"):
                raise ValueError("--system must be fold or drop")
            path, n = write_llava(release, out, splits, system=system)  # type: ignore[arg-type]
            console.print(f"LLaVA: {n} rows -> {path} (image folder: {release})")
        else:
            raise ValueError(f"unknown format {fmt!r}: use internvl-meta or llava")
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("eval")
def eval_cmd(
    predictions: Annotated[
        Path,
        typer.Argument(
            help='JSONL of {"id": row id, "answer": model text}, or MedRegA\'s native answer file '
            "(a JSON list, or JSONL with question_id/pred_answer)"
        ),
    ],
    release: Annotated[Path, typer.Option("--release", "-r", help="the release folder the samples come from")],
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            "-p",
            help="default | medrega (MedRegA's published definitions, bugs fixed; docs/evaluation.md)",
        ),
    ] = "default",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the full report (all metrics, per term) as JSON")
    ] = None,
    details: Annotated[Path | None, typer.Option("--details", help="write per-sample scores as JSONL")] = None,
    split: Annotated[
        list[str] | None,
        typer.Option("--split", "-s", help="split(s) to score (default: the splits holding predicted ids)"),
    ] = None,
    ignore_missing: Annotated[
        bool,
        typer.Option(
            "--ignore-missing", help="leave rows without a prediction out (default: score them as empty answers)"
        ),
    ] = False,
) -> None:
    """Score model answers against a release: box IoU/acc@t/P-R-F1, term accuracy, grounded-report metrics."""
    import orjson

    from flows.eval_tables import render_tables
    from pipeline.core.atomic import write_bytes_atomic
    from pipeline.evaluate.run import evaluate, write_details

    if not predictions.is_file():
        err.print(f"[red]error:[/red] predictions file {predictions} not found")
        raise typer.Exit(2)
    try:
        report = evaluate(release, predictions, protocol=protocol, splits=split or None, ignore_missing=ignore_missing)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    for t in render_tables(report):
        console.print(t)
    c = report.counts
    line = f"evaluated {c['evaluated']} rows; missing predictions: {c['missing']}" + (
        " (left out)" if c["missing_ignored"] else " (scored as empty answers)"
    )
    line += (
        f"; ids not in the release: {c['unknown_ids']}; duplicates: {c['duplicates']}; unusable entries: {c['invalid']}"
    )
    (err if c["missing"] or c["unknown_ids"] or c["invalid"] else console).print(line)
    for problem in c["invalid_lines"][:20]:
        err.print(f"  {predictions}: {problem}", markup=False, highlight=False)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(json_out, orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"report: {json_out}")
    if details:
        details.parent.mkdir(parents=True, exist_ok=True)
        write_details(report, details)
        console.print(f"per-sample scores: {details}")


app.add_typer(translate_app, name="translate")  # medreg translate run | accept (flows/translate.py)
app.add_typer(expand_app, name="expand")  # medreg expand templates | glossary | accept (flows/expand_cli.py)


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
