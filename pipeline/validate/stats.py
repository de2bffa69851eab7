"""Statistical plausibility validator ``stats``, fitted on the release's own rows.

For every region it computes five features

* ``log_area``   log of the box area as a fraction of the image (from the 0..999 box),
* ``log_aspect`` log(width / height) of the pixel box,
* ``cx``, ``cy`` box centre as a fraction of the image width / height,
* ``intensity``  mean grey value (0..255) of the written image inside the pixel box,

groups regions by ``group_by`` (default: modality, axis, body region, term: a structure at neck level is not
compared with the same structure on abdominal slices) and scores each feature with a robust
z-score ``|x - median| / sqrt(max(1.4826 * MAD, floor)**2 + q**2)`` where ``q`` is the region's own
pixel quantisation (a one-pixel change of each box side: ``1/w_px + 1/h_px`` in log area and log
aspect, ``1/W`` resp. ``1/H`` for the centre), so tiny boxes are not outliers by rounding alone.  A region
whose largest z exceeds ``z_flag`` is flagged (``z_fail``: failed) naming the feature; a group with fewer
than ``min_samples`` distinct regions passes with reason ``too_few``.  The same region appearing in several
rows (EN and ZH, several tasks) counts once in the fit.

Fitting can be split from extraction for distributed runs: :func:`region_features` per item (in any
worker), :meth:`StatsValidator.fit_features` on the concatenation, then ``validate``.
``to_dict``/``from_dict`` persist a fit.

Score: the row's largest z (higher = less plausible; ``None`` when no region was scored).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.validate.base import RegionFinding, ValidationItem, summarise
from schemas.records import ValidationResult
from schemas.validation import StatsConfig

FEATURES = ("log_area", "log_aspect", "cx", "cy", "intensity")
# Smallest robust scale per feature: a near-constant feature must not turn tiny differences into
# huge z-scores (1.5% of the image for centres, 5% in log size/aspect, 2 grey levels).
SCALE_FLOOR = {"log_area": 0.05, "log_aspect": 0.05, "cx": 0.015, "cy": 0.015, "intensity": 2.0}
MAD_TO_SD = 1.4826


def _chunks(paths: list[Any], size: int) -> Iterator[bytes]:
    """The non-empty files' bytes, concatenated into chunks of about ``size`` bytes (whole lines)."""
    buf: list[bytes] = []
    n = 0
    for p in paths:
        if not p.is_file():
            continue
        data = p.read_bytes()
        if not data.strip():
            continue
        buf.append(data if data.endswith(b"\n") else data + b"\n")
        n += len(data)
        if n >= size:
            yield b"".join(buf)
            buf, n = [], 0
    if buf:
        yield b"".join(buf)


def _robust(g: dict[str, Any], feature: str, arr: np.ndarray) -> None:
    """The group's median and robust scale of one feature from its finite values (none: left out)."""
    if arr.size == 0:
        return
    med = float(np.median(arr))
    mad = float(np.median(np.abs(arr - med)))
    g["median"][feature] = round(med, 9)
    g["scale"][feature] = round(max(MAD_TO_SD * mad, SCALE_FLOOR[feature]), 9)


def _read_group(spill: Any, parts: list[tuple[int, int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """One group's (dedup hashes, features) from the fit's spill file, in the order they were written."""
    hashes, values = [], []
    for off, n in parts:
        spill.seek(off)
        data = spill.read(n * (1 + width) * 8)
        hashes.append(np.frombuffer(data, dtype=np.uint64, count=n))
        values.append(np.frombuffer(data, dtype=np.float64, offset=n * 8).reshape(n, width))
    return np.concatenate(hashes), np.concatenate(values)


def group_key(meta: dict[str, Any], term: str, group_by: Sequence[str]) -> str:
    return "|".join(term if g == "term" else str(meta.get(g, "")) for g in group_by)


def region_features(item: ValidationItem) -> list[dict[str, Any]]:
    """Feature records of an item's regions: ``{"term", "dedup", "meta": {...}, "features": {...}}``."""
    grey = item.grey()
    h, w = grey.shape
    out: list[dict[str, Any]] = []
    meta = item.meta
    img_key = item.image_digest()
    for reg in item.regions:
        try:
            x1, y1, x2, y2 = (int(v) for v in reg["box"])
            px0, py0, px1, py1 = (int(v) for v in reg["box_px"])
        except (KeyError, TypeError, ValueError):
            continue
        if not (x1 < x2 and y1 < y2 and px0 <= px1 and py0 <= py1):
            continue  # the rule validator reports these
        crop = grey[max(py0, 0) : min(py1, h - 1) + 1, max(px0, 0) : min(px1, w - 1) + 1]
        feats = {
            "log_area": math.log((x2 - x1) * (y2 - y1) / 999.0**2),
            "log_aspect": math.log((px1 - px0 + 1) / (py1 - py0 + 1)),
            "cx": (x1 + x2) / 2.0 / 999.0,
            "cy": (y1 + y2) / 2.0 / 999.0,
            "intensity": float(crop.mean()) if crop.size else float("nan"),
        }
        bw, bh = px1 - px0 + 1, py1 - py0 + 1
        quant = {"log_area": 1 / bw + 1 / bh, "log_aspect": 1 / bw + 1 / bh, "cx": 1 / w, "cy": 1 / h, "intensity": 0.0}
        out.append(
            {
                "term": str(reg.get("term", "?")),
                "quant": quant,
                "dedup": f"{img_key}|{reg.get('term')}|{x1},{y1},{x2},{y2}",
                "meta": {k: meta.get(k) for k in ("modality", "axis", "source", "body_region")},
                "features": feats,
            }
        )
    return out


class StatsValidator:
    name = "stats"
    version = "1"
    level = "release"  # fitted on the whole release's rows
    needs_model = False
    config_model = StatsConfig
    description = "robust z-scores of box features per group, fitted on the release's own rows"

    def __init__(self, config: StatsConfig | None = None, *, glossary: Any | None = None) -> None:
        self.config = config or StatsConfig()
        self.groups: dict[str, dict[str, Any]] = {}  # key -> {"n", "median": {f: v}, "scale": {f: v}}
        self.fitted = False
        self._hash: tuple[StatsConfig, dict[str, Any], str] | None = None  # (the config and fit it hashes, hash)

    # ------------------------------------------------------------------ fit
    @property
    def needs_fit(self) -> bool:
        return not self.fitted

    @property
    def config_hash(self) -> str:
        """Config + fitted statistics: a verdict is only reusable under the same fit.

        Asked once per row by the verdict cache: serialising the fit each time cost ~1.7 ms a row on a
        CT release (half of its validation stage), so the hash is kept until the config or the fit is
        replaced (both are only ever reassigned, never changed in place)."""
        held = self._hash
        if held is None or held[0] is not self.config or held[1] is not self.groups:
            blob = json.dumps({"cfg": self.config.config_hash(), "groups": self.groups}, sort_keys=True)
            held = self._hash = (self.config, self.groups, hashlib.sha256(blob.encode()).hexdigest()[:16])
        return held[2]

    def fit(self, items: list[ValidationItem]) -> StatsValidator:
        records = [r for it in items for r in region_features(it)]
        return self.fit_features(records)

    def fit_features(self, records: list[dict[str, Any]]) -> StatsValidator:
        seen: set[str] = set()
        values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for rec in records:
            if rec["dedup"] in seen:
                continue
            seen.add(rec["dedup"])
            key = group_key(rec["meta"], rec["term"], self.config.group_by)
            for f in self.config.features:
                v = rec["features"][f]
                if v is not None and math.isfinite(v):
                    values[key][f].append(float(v))
                else:
                    values[key].setdefault(f, [])
            values[key]["__n__"].append(1.0)
        groups: dict[str, dict[str, Any]] = {}
        for key in sorted(values):
            fv = values[key]
            g: dict[str, Any] = {"n": len(fv["__n__"]), "median": {}, "scale": {}}
            for f in self.config.features:
                _robust(g, f, np.asarray(fv.get(f, []), dtype=np.float64))
            groups[key] = g
        self.groups = groups
        self.fitted = True
        return self

    def fit_tables(self, paths: list[Any], chunk_bytes: int = 1 << 20, spill_dir: Any = None) -> StatsValidator:
        """Fit from the compact per-region tables the case tasks wrote (JSONL of :func:`region_features`
        records): the rows and images of the release are never loaded for the fit.

        The files are parsed 1 MB at a time (polars; 8 MB chunks peaked 30 MB higher at 10,000 cases, in
        the same time: docs/benchmarks.md, B4); each chunk's records are appended, group by
        group, as (dedup hash, features) blocks to an unlinked spill file in ``spill_dir`` (the build
        passes its store; default: the system's temp folder).  Each group is then read back alone and
        fitted with exact ``np.median`` (as :meth:`fit_features`).  Memory: one chunk and the largest
        group (48 bytes a region of it), not the release.  A region repeated in its group (same dedup
        key) counts once."""
        import polars as pl

        self.groups, self.fitted = {}, True
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
        names: dict[str, int] = {}
        blocks: list[tuple[int, int, int]] = []  # (group id, offset, records) in the spill file
        width = len(self.config.features)
        fd, name = tempfile.mkstemp(prefix=".stats-fit-", suffix=".tmp", dir=spill_dir)
        os.unlink(name)
        with os.fdopen(fd, "w+b") as spill:
            for blob in _chunks(paths, chunk_bytes):
                df = self._compact(pl, blob)
                if not df.height:
                    continue
                keys = df["__key__"].to_list()
                code = np.fromiter((names.setdefault(k, len(names)) for k in keys), np.int64, len(keys))
                dedup = df["__dedup__"].to_numpy().astype(np.uint64, copy=False)
                table = df.select(self.config.features).to_numpy().astype(np.float64, copy=False)
                del df, keys
                order = np.argsort(code, kind="stable")
                code, dedup, table = code[order], dedup[order], table[order]
                starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
                for a, b in zip(starts, [*starts[1:], len(code)], strict=True):
                    blocks.append((int(code[a]), spill.tell(), int(b - a)))
                    spill.write(dedup[a:b].tobytes() + np.ascontiguousarray(table[a:b]).tobytes())
            by_id = {i: k for k, i in names.items()}
            per_group: dict[int, list[tuple[int, int]]] = {}
            for gid, off, n in blocks:
                per_group.setdefault(gid, []).append((off, n))
            fitted = {by_id[gid]: self._group_stats(*_read_group(spill, parts, width))
                      for gid, parts in per_group.items()}
        self.groups = {k: fitted[k] for k in sorted(fitted)}
        return self

    def _group_stats(self, dedup: np.ndarray, block: np.ndarray) -> dict[str, Any]:
        """n, median and robust scale per feature of one group's (regions x features) block, its repeated
        regions (same dedup hash) counted once."""
        _, first = np.unique(dedup, return_index=True)
        block = block[np.sort(first)]
        g: dict[str, Any] = {"n": int(block.shape[0]), "median": {}, "scale": {}}
        for j, f in enumerate(self.config.features):
            arr = block[:, j]
            _robust(g, f, arr[np.isfinite(arr)])
        return g

    def _compact(self, pl: Any, blob: bytes) -> Any:
        """One chunk of feature records as (group key, dedup hash, features) columns."""
        meta_keys = ("modality", "axis", "source", "body_region")
        schema = {
            "term": pl.String,
            "dedup": pl.String,
            "meta": pl.Struct({k: pl.String for k in meta_keys}),
            "features": pl.Struct({f: pl.Float64 for f in FEATURES}),
        }
        df = pl.read_ndjson(io.BytesIO(blob), schema=schema).unnest("meta").unnest("features")
        key = pl.concat_str(
            [pl.col("term") if g == "term" else pl.col(g).fill_null("None") for g in self.config.group_by],
            separator="|",
        )
        return df.select(key.alias("__key__"), pl.col("dedup").hash(seed=0).alias("__dedup__"),
                         *[pl.col(f).fill_null(float("nan")) for f in self.config.features])

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "config": self.config.model_dump(mode="json"), "groups": self.groups}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatsValidator:
        v = cls(StatsConfig.model_validate(data["config"]))
        v.groups = data["groups"]
        v.fitted = True
        return v

    # ------------------------------------------------------------------ validate
    def zscores(self, rec: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, float]]:
        key = group_key(rec["meta"], rec["term"], self.config.group_by)
        g = self.groups.get(key)
        if g is None:
            return None, {}
        z: dict[str, float] = {}
        for f, med in g["median"].items():
            v = rec["features"].get(f)
            if v is None or not math.isfinite(v):
                continue
            q = rec.get("quant", {}).get(f, 0.0)
            z[f] = abs(v - med) / math.hypot(g["scale"][f], q)
        return g, z

    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
        if not self.fitted:
            self.fit(items)
        return [self._one(it) for it in items]

    def _one(self, item: ValidationItem) -> ValidationResult:
        cfg = self.config
        findings: list[RegionFinding] = []
        row_z: float | None = None
        details: list[dict[str, Any]] = []
        for rec in region_features(item):
            g, z = self.zscores(rec)
            term = rec["term"]
            n = 0 if g is None else int(g["n"])
            if g is None or n < cfg.min_samples:
                findings.append(RegionFinding("pass", "too_few", f"{term} n={n} < {cfg.min_samples}"))
                continue
            if not z:
                continue
            feat, zmax = max(z.items(), key=lambda kv: (kv[1], kv[0]))
            row_z = zmax if row_z is None else max(row_z, zmax)
            details.append({"term": term, "feature": feat, "z": round(zmax, 3)})
            verdict = "pass"
            if cfg.z_fail is not None and zmax > cfg.z_fail:
                verdict = "fail"
            elif zmax > cfg.z_flag:
                verdict = "flag"
            if verdict != "pass":
                val = rec["features"][feat]
                findings.append(
                    RegionFinding(
                        verdict,
                        f"outlier_{feat}",
                        f"{term} {feat} z={zmax:.1f} ({val:.3g} vs median {g['median'][feat]:.3g}, n={n})",
                    )
                )
        if not details and not findings:
            return summarise(self, [], None, ok_reason="no_regions")
        return summarise(self, findings, None if row_z is None else round(row_z, 4), regions=details)
