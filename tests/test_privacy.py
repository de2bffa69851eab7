"""Privacy: no DICOM header value beyond geometry/intensity reaches any output file of a release."""

import re

import orjson
import pydicom

from flows.run import build
from schemas.config import ReleaseConfig


def test_no_patient_name_id_or_date_in_any_output_file(tmp_path, samples):
    ct = pydicom.dcmread(str(samples / "dcmqi-ct-liver-seg/ct-3slice/01.dcm"), stop_before_pixels=True)
    name, pid, date = str(ct.PatientName), str(ct.PatientID), str(ct.StudyDate)
    assert (name, pid, date) == ("JANCT000", "99000", "20030417")  # the README's facts: the test has teeth
    secrets = {name, pid, date, str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID)}
    cfg = ReleaseConfig.model_validate({
        "name": "privacy", "version": "1", "sources": [{"card": "dcmqi-liver-seg"}, {"card": "rtstruct-visible-human"}],
        "output": {"formats": ["internvl", "llava"]},
    })
    rel = build(cfg, tmp_path / "out", samples_root=samples)
    m = orjson.loads((rel / "manifest.json").read_bytes())
    assert m["counts"]["rows"] > 0 and m["counts"]["by_source"].get("dcmqi-liver-seg", 0) > 0, m["errors"]
    files = [p for p in rel.rglob("*") if p.is_file()]
    assert any(p.suffix == ".jsonl" for p in files) and any(p.suffix == ".png" for p in files)
    for p in files:
        data = p.read_bytes()
        for s in secrets:
            if p.suffix == ".png" and s == pid:
                continue  # compressed pixel bytes: checked as text below for text files only
            assert s.encode() not in data, (p.name, s)
        if p.suffix in (".jsonl", ".json", ".md", ".html", ".txt"):
            text = data.decode("utf-8")
            assert not re.search(rf"(?<![0-9a-f]){pid}(?![0-9a-f])", text), p.name
    # the hashed pseudonym is there instead
    rows = [orjson.loads(line) for p in files if p.suffix == ".jsonl" and "data/" in p.as_posix()
            for line in p.read_bytes().splitlines()]
    dcmqi = [r for r in rows if r["meta"]["source"] == "dcmqi-liver-seg"]
    assert dcmqi and all(r["meta"]["patient_id"].startswith("p") for r in dcmqi)
