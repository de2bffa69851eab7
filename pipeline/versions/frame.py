"""A release's rows as a polars frame, streamed from its shards: the keys of every row and hashes of its parts.

Every row in a release is written by :func:`pipeline.release.writer.canonical_row`: validated against
:class:`schemas.records.Row` and dumped by orjson in the model's field order, one line per row, no spaces.
So a row's text *is* its content (same text = same row) and its fields sit at known places.  Decoding
~2 KB rows with polars' JSON reader and the full nested schema runs at ~24k rows/s on one core (B9
``--nested``, docs/benchmarks.md): too slow for a million-row diff in a minute.  So the scan reads each
shard line as text (one ``String`` column, explicit schema) and takes, in two passes:

1. for every row (:func:`scan_keys`): the keys (id, image, size, task, lang, source, patient, split)
   with one anchored regular expression per object, built from the field order of ``Row`` and
   ``SampleMeta`` (not written by hand), and a 64-bit hash of the whole line;
2. for the changed rows only (:func:`read_parts`): a hash of each part a diff reports on
   (conversations, regions, display window + transform, validation), the meta scalars and the verdicts,
   decoded with dtypes from :data:`ROW_SCHEMA` (derived from ``Row``: nothing is inferred).

A line the expressions do not fit (edited by hand, another writer) stops the scan with the file and line
number.  Both passes run on polars' streaming engine: memory holds the keys, never the lines.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import polars as pl
from pydantic import BaseModel

from schemas.records import Row, SampleMeta

_SCALARS: dict[Any, pl.DataType] = {str: pl.String(), int: pl.Int64(), float: pl.Float64(), bool: pl.Boolean()}


def dtype_of(annotation: Any) -> pl.DataType:
    """The polars dtype of a pydantic field annotation (str/int/float/bool, Literal, list, nested model)."""
    origin = get_origin(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin is Literal:
        kinds = {type(a) for a in get_args(annotation)}
        if len(kinds) == 1 and next(iter(kinds)) in _SCALARS:
            return _SCALARS[next(iter(kinds))]
    if origin is list:
        return pl.List(dtype_of(get_args(annotation)[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pl.Struct(schema_of(annotation))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{annotation}: the row contract has no optional fields (no nulls); not supported")
    raise TypeError(f"no polars dtype for {annotation!r}")


def schema_of(model: type[BaseModel]) -> dict[str, pl.DataType]:
    """Field name (JSON alias) -> dtype, in the model's field order (the order rows are written in)."""
    return {(f.alias or name): dtype_of(f.annotation) for name, f in model.model_fields.items()}


#: the explicit polars schema of a release row (schemas.records.Row)
ROW_SCHEMA: dict[str, pl.DataType] = schema_of(Row)
_META: dict[str, pl.DataType] = schema_of(SampleMeta)
#: dtype of ``meta.validation`` (decoded for rows whose verdicts changed)
VALIDATION_DTYPE: pl.DataType = _META["validation"]

HEAD_KEYS = ("id", "image", "width", "height")
META_KEYS = ("task", "lang", "source", "patient_id", "split")
KEYS = HEAD_KEYS + META_KEYS
#: the meta fields before ``regions`` (decoded for changed rows, with their dtypes from ``Row``)
META_SCALARS: dict[str, pl.DataType] = dict(list(_META.items())[: list(_META).index("regions")])
_LINE = "line"


def _value(dtype: pl.DataType, capture: bool) -> str:
    """A JSON value of a scalar field; strings without quotes or backslashes (keys are plain identifiers;
    a string holding an escape makes the line not fit, and the scan says so)."""
    body = r"-?\d+" if dtype == pl.Int64() else r'"[^"\\]*"'
    if capture:
        return f"({body})" if dtype == pl.Int64() else r'"([^"\\]*)"'
    return body


def _object_regex(schema: dict[str, pl.DataType], want: Sequence[str], prefix: str) -> tuple[str, list[str]]:
    """A regex matching the leading scalar fields of an object up to the last wanted key, capturing the
    wanted ones, in the schema's (= the writer's) order."""
    last = max(list(schema).index(k) for k in want)
    parts, names = [], []
    for name in list(schema)[: last + 1]:
        dtype = schema[name]
        if isinstance(dtype, (pl.List, pl.Struct)):
            raise ValueError(f"key {name} of the row contract is not a scalar; the layout changed")
        parts.append(f'"{name}":' + _value(dtype, name in want))
        if name in want:
            names.append(name)
    return prefix + ",".join(parts), names


HEAD_RE, _HEAD_NAMES = _object_regex(ROW_SCHEMA, HEAD_KEYS, r"^\{")
META_RE, _META_NAMES = _object_regex(_META, META_KEYS, r',"meta":\{')


def _split(expr: pl.Expr, sep: str, part: int) -> pl.Expr:
    return expr.str.split_exact(sep, 1).struct.field(f"field_{part}")


def scan_lines(files: Sequence[Path]) -> pl.LazyFrame:
    """The shard lines as one String column (explicit schema; a separator no JSON line contains)."""
    return pl.scan_csv([str(f) for f in files], has_header=False, separator="\x1f", quote_char=None,
                       schema={_LINE: pl.String()}, row_index_name="line_no", row_index_offset=1,
                       include_file_paths="file")


def scan_keys(files: Sequence[Path]) -> pl.LazyFrame:
    """Pass 1: the keys (:data:`KEYS`) and a hash ``h`` of the whole line of every row of ``files``, plus
    ``file`` and ``line_no`` (for :func:`check_layout`)."""
    line = pl.col(_LINE)
    head = line.str.extract_groups(HEAD_RE).struct.rename_fields(_HEAD_NAMES)
    meta = line.str.extract_groups(META_RE).struct.rename_fields(_META_NAMES)
    return (
        scan_lines(files)
        .select(head.alias("_h"), meta.alias("_m"), line.hash().alias("h"), "file", "line_no")
        .unnest("_h", "_m")
        .with_columns(pl.col("width").cast(pl.Int64), pl.col("height").cast(pl.Int64))
    )


def check_layout(df: pl.DataFrame, release: Path) -> None:
    """Raise for the first line whose keys the layout expressions could not read."""
    bad = df.filter(pl.any_horizontal(pl.col(k).is_null() for k in KEYS)).head(1)
    if bad.height:
        f, n = Path(bad["file"][0]), bad["line_no"][0]
        rel = f.relative_to(release) if f.is_relative_to(release) else Path(f.name)
        raise ValueError(
            f"{release.name}/{rel.as_posix()} line {n}: not a canonical release row (medreg writes rows in the "
            f"field order of schemas.records.Row, without spaces, and key fields without quotes or backslashes); "
            f"was the shard edited? Rebuild the release, or check it with `medreg verify`"
        )


def read_keys(release: Path, shards: Sequence[str]) -> pl.DataFrame:
    """:func:`scan_keys` of a release's shards, collected and checked (duplicate ids are an error)."""
    files = [release / s for s in shards]
    if not files:
        schema: dict[str, pl.DataType] = {k: pl.String() for k in KEYS}
        schema.update(width=pl.Int64(), height=pl.Int64(), h=pl.UInt64())
        return pl.DataFrame(schema=schema)
    df = scan_keys(files).collect(engine="streaming")  # bounded memory: the lines are never all held
    check_layout(df, release)
    dup = df.height - df["id"].n_unique()
    if dup:
        raise ValueError(f"{release.name}: {dup} row ids occur more than once; ids must be unique in a release")
    return df.drop("file", "line_no")


def read_parts(release: Path, shards: Sequence[str], ids: pl.Series) -> pl.DataFrame:
    """Pass 2, for the rows ``ids`` only: a hash of each part (``h_conversations``, ``h_regions``,
    ``h_display`` = window + transform, ``h_validation``), the meta scalars decoded with their dtypes from
    ``Row`` (column ``meta``), and the verdicts (column ``verdicts``: list of {validator, verdict, ...})."""
    files = [release / s for s in shards]
    line = pl.col(_LINE)
    rid = line.str.extract(r'^\{"id":"([^"\\]*)"', 1)
    lf = scan_lines(files).with_columns(rid.alias("id")).filter(pl.col("id").is_in(ids.implode()))
    lf = lf.with_columns(_split(line, ',"meta":{', 0).alias("_a"), _split(line, ',"meta":{', 1).alias("_b"))
    lf = lf.with_columns(_split(pl.col("_b"), ',"regions":', 0).alias("_s"), _split(pl.col("_b"), ',"regions":', 1)
                         .alias("_r"))
    lf = lf.with_columns(_split(pl.col("_r"), ',"window":', 0).alias("_g"), _split(pl.col("_r"), ',"window":', 1)
                         .alias("_t"))
    validation = _split(pl.col("_t"), ',"validation":', 1).str.strip_suffix("}}")
    return lf.select(
        "id",
        _split(pl.col("_a"), ',"conversations":', 1).hash().alias("h_conversations"),
        pl.col("_g").hash().alias("h_regions"),
        _split(pl.col("_t"), ',"validation":', 0).hash().alias("h_display"),
        validation.hash().alias("h_validation"),
        pl.format("{{{}}}", pl.col("_s")).str.json_decode(pl.Struct(META_SCALARS)).alias("meta"),
        validation.str.json_decode(VALIDATION_DTYPE).alias("verdicts"),
    ).collect(engine="streaming")
