"""Split decisions at release level, made from the case summaries before anything is written:

* **Stability across versions.**  With ``previous:`` in the config, every patient of the previous release
  keeps the split it had there (a new seed, new ratios or a new official split never move it); new
  patients get their own split (official, else patient hash).  Without ``previous`` the patient hash
  already keeps a patient's split whatever else the release holds.
* **Duplicates** (:mod:`pipeline.versions.duplicates`).  Patients linked by a duplicate group go to one
  split: the split of the group's *anchor*, the first patient by (in the previous release, has an official
  split, order of its source in the config, patient id).  So a new copy of an existing image joins the
  existing copy's split and never moves it.  Patients of the previous release are never moved: if a group
  links two of them that are in different splits (a leak the previous release already had), they stay and
  the group is reported as a conflict.  Policy ``keep_one`` also drops the rows of every copy but the
  anchor's (counted as ``row:duplicate_image``); ``report`` changes nothing and only lists the groups.

The result feeds the writer: ``split_overrides`` (patient -> split) and ``drop_images`` ((source, case id,
image) whose rows are left out).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.versions.duplicates import Group, UnionFind, find_groups, members_of
from schemas.config import DuplicateConfig
from schemas.records import CaseSummary, DuplicateGroup, DuplicateMember, DuplicateSummary

EXAMPLE_GROUPS = 20


@dataclass
class SplitContext:
    """What the decisions need besides the summaries."""

    source_order: dict[str, int]  # source -> position in the release config
    official: set[tuple[str, str]]  # (source, case id) of cases whose split is the dataset's official one
    previous: dict[str, str] | None = None  # patient -> split in the previous release (None: no previous)


@dataclass
class SplitDecisions:
    split_overrides: dict[str, str] = field(default_factory=dict)
    drop_images: set[tuple[str, str, str]] = field(default_factory=set)
    groups: list[DuplicateGroup] = field(default_factory=list)
    summary: DuplicateSummary | None = None
    pinned: int = 0  # patients held at their previous split although their own split differs now


def _current_splits(summaries: Sequence[CaseSummary]) -> dict[str, str]:
    """Each patient's split: that of its first case in (source, case id) order (one pass, nothing sorted)."""
    first: dict[str, tuple[str, str, str]] = {}
    for s in summaries:
        seen = first.get(s.patient)
        if seen is None or (s.source, s.case_id) < seen[:2]:
            first[s.patient] = (s.source, s.case_id, s.split)
    return {p: v[2] for p, v in first.items()}


def decide(summaries: Sequence[CaseSummary], ctx: SplitContext, cfg: DuplicateConfig) -> SplitDecisions:
    """Split overrides, dropped copies and the duplicate report (see the module docstring)."""
    current = _current_splits(summaries)
    prev = ctx.previous or {}
    out = SplitDecisions()
    final = dict(current)
    for p, split in current.items():  # stability: previous patients keep their previous split
        if p in prev and prev[p] != split:
            final[p] = prev[p]
            out.pinned += 1
    pinned = dict(final)
    groups = find_groups(members_of(summaries), cfg.near_threshold)
    patient_source: dict[str, str] = {}
    official_patients: set[str] = set()
    for s in summaries:
        patient_source[s.patient] = s.source
        if (s.source, s.case_id) in ctx.official:
            official_patients.add(s.patient)

    def priority(p: str) -> tuple[int, int, int, str]:
        return (0 if p in prev else 1, 0 if p in official_patients else 1,
                ctx.source_order.get(patient_source.get(p, ""), 1 << 30), p)

    conflicts: list[str] = []
    if cfg.policy != "report":
        conflicts = _force_same_split(groups, final, prev, priority)
    for p, split in final.items():
        if split != current[p]:
            out.split_overrides[p] = split
    kept: dict[int, str] = {}
    for i, g in enumerate(groups):
        kept[i] = min(g.patients, key=priority)
        if cfg.policy == "keep_one":
            out.drop_images |= {(m.source, m.case_id, m.image) for m in g.members if m.patient != kept[i]}
    out.groups = [_record(g, final if cfg.policy != "report" else current, current, kept[i], cfg.policy)
                  for i, g in enumerate(groups)]
    out.summary = DuplicateSummary(
        policy=cfg.policy, near_threshold=cfg.near_threshold, groups=len(groups),
        exact_groups=sum(g.kind == "exact" for g in groups), near_groups=sum(g.kind == "near" for g in groups),
        images=len({(m.source, m.case_id, m.image) for g in groups for m in g.members}),
        patients_moved=sum(1 for p in {m.patient for g in groups for m in g.members} if final[p] != pinned[p]),
        conflicts=conflicts, examples=out.groups[:EXAMPLE_GROUPS],
    )
    return out


Priority = Callable[[str], tuple[int, int, int, str]]


def _force_same_split(groups: list[Group], final: dict[str, str], prev: dict[str, str],
                      priority: Priority) -> list[str]:
    """Put the patients of each connected set of groups in the anchor's split (``final`` is updated);
    returns the conflicts (previous-release patients in different splits, left where they were)."""
    index = {p: i for i, p in enumerate(sorted({p for g in groups for p in g.patients}))}
    uf = UnionFind(len(index))
    for g in groups:
        ps = g.patients
        for p in ps[1:]:
            uf.union(index[ps[0]], index[p])
    comps: dict[int, list[str]] = defaultdict(list)
    for p, i in index.items():
        comps[uf.find(i)].append(p)
    conflicts = []
    for ps in comps.values():
        ps.sort(key=priority)
        target = final[ps[0]]
        stuck = sorted({final[p] for p in ps if p in prev and final[p] != target})
        if stuck:
            conflicts.append(
                f"patients {', '.join(ps)}: copies of one image are in {target} and {', '.join(stuck)} since the "
                f"previous release; its patients keep their splits (rebuild without `previous` to re-split them)")
        for p in ps:
            if p not in prev:
                final[p] = target
    return sorted(conflicts)


def _record(g: Group, final: dict[str, str], current: dict[str, str], kept: str, policy: str) -> DuplicateGroup:
    return DuplicateGroup(
        kind="exact" if g.kind == "exact" else "near",
        distance=g.distance,
        members=[DuplicateMember(source=m.source, case_id=m.case_id, patient_id=m.patient, image=m.image,
                                 axis=m.axis, slice_index=m.slice_index, split=final[m.patient],
                                 moved_from=current[m.patient] if final[m.patient] != current[m.patient] else "",
                                 kept=policy != "keep_one" or m.patient == kept)
                 for m in g.members],
    )
