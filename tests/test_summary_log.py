"""The driver's spilled case summaries (pipeline.release.summaries): plan order, replace, nothing left behind."""

from __future__ import annotations

import pytest

from pipeline.release.summaries import SummaryLog
from schemas.records import CaseSummary, ErrorRecord, ImageInfo


def _summary(i: int) -> CaseSummary:
    error = ErrorRecord(source="s", case_id=f"c{i:03d}", stage="read", error="bad ü", hint="fix")
    return CaseSummary(
        source="s", case_id=f"c{i:03d}", key=f"{i:064x}", patient=f"p{i % 3}", split="train", rows=i,
        groups={"train/detection/en": i}, dropped={"region:dust": i % 2},
        images=[ImageInfo(rel=f"images/00/{i:064x}.png", width=512, height=290, axis="axial", slice_index=i,
                          pixel_sha256="ab" * 32, phash="0f" * 8)],
        errors=[error] if i == 4 else [],
        notes=["n"] * (i % 2),
    )


def test_summaries_come_back_in_plan_order_whatever_order_they_were_put(tmp_path):
    log = SummaryLog(6, tmp_path)
    for i in (3, 0, 5, 1, 4, 2):
        log.put(i, _summary(i))
    assert len(log) == 6
    assert [s.case_id for s in log] == [f"c{i:03d}" for i in range(6)]
    assert list(log) == [_summary(i) for i in range(6)]  # every field, non-ASCII text included
    assert log[-1] == _summary(5) and log[1:3] == [_summary(1), _summary(2)]
    assert [s.rows for s in log if s.rows > 3] == [4, 5]  # iterates again: a Sequence, not a one-shot iterator


def test_a_second_put_replaces_and_a_missing_case_is_an_error(tmp_path):
    log = SummaryLog(2, tmp_path)
    log.put(0, _summary(0))
    with pytest.raises(KeyError, match="#1"):
        list(log)
    log.put(1, _summary(1))
    log.put(0, _summary(7))
    assert [s.case_id for s in log] == ["c007", "c001"]
    with pytest.raises(IndexError):
        log[2]


def test_the_log_leaves_no_file_and_refuses_use_after_close(tmp_path):
    log = SummaryLog(1, tmp_path / "tmp")
    log.put(0, _summary(1))
    assert list((tmp_path / "tmp").iterdir()) == []  # unlinked at creation: a kill leaves nothing
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log[0]
