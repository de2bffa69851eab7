"""PET (PT) image series: what the stored values mean, and SUV.

The pipeline shows PET in SUV (standardised uptake value), so it must know what a series' rescaled
values are.  The facts come from the image files' own headers: Units (0054,1001), SUVType (0054,1006),
DecayCorrection (0054,1102), CorrectedImage (0028,0051) and the per-slice RescaleSlope.

Rules (docs/formats.md, "PET"):

* Units ``GML`` (g/ml: SUV body weight, lean body mass, ideal body weight) or ``CM2ML`` (cm2/ml: SUV
  body surface area) mean the rescaled values **are** SUV already (a vendor's or a toolkit's SUV
  export, e.g. the IBSI/MIRP one).  They are used as they are: a dose/weight factor is never applied a
  second time, whatever the card says.
* Units ``BQML`` (activity concentration) become body-weight SUV only when the card says so
  (``intensity.suv_conversion: bqml_to_bw``): ``SUV = C[Bq/ml] * weight[g] / dose[Bq]``, the dose
  decayed to the time the images are corrected to (DecayCorrection ``ADMIN``: no decay; ``START``: from
  injection to the series start).  Otherwise the case fails with a ReadError naming the file and the
  fix: the pipeline does not guess.
* Any other Units (``CNTS``, ``PROPCPS``, missing, ...) or DecayCorrection ``NONE`` with a conversion
  requested: the case fails (no defensible SUV).  Files of one series that disagree on Units or
  SUVType: the case fails.

Privacy: weight, dose and times are read for the arithmetic only; they never leave this module (notes
and the facts reported carry units, SUV type, decay correction, slope range and the uptake time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.ingest.readers import ReadError

#: Units whose values are SUV as stored -> what they mean.
SUV_UNITS = {"GML": "g/ml, SUV", "CM2ML": "cm2/ml, SUV body surface area"}
UNITS_MEANING = {
    **SUV_UNITS,
    "BQML": "Bq/ml, activity concentration",
    "CNTS": "counts",
    "PROPCNTS": "proportional to counts",
    "PROPCPS": "proportional to counts per second",
    "CPS": "counts per second",
    "NONE": "unitless",
    "PCNT": "percent",
}
CONVERSIONS = ("none", "bqml_to_bw")

_TAGS = [
    "Units", "SUVType", "DecayCorrection", "CorrectedImage", "RescaleSlope", "RescaleIntercept", "PatientWeight",
    "RadiopharmaceuticalInformationSequence", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
]


@dataclass
class PetFacts:
    """What the headers of one PT series say about its values (first file for the dose data)."""

    first_file: str
    files: int
    units: str
    suv_type: str
    decay_correction: str
    corrected: tuple[str, ...]
    slope_range: tuple[float, float]
    distinct_slopes: int
    intercepts: tuple[float, ...]
    disagreement: str = ""  # files of the series that disagree on Units / SUVType
    # conversion inputs: never reported
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None
    injection_datetime: str = ""
    injection_time: str = ""
    series_date: str = ""
    series_time: str = ""

    @property
    def is_suv(self) -> bool:
        return self.units in SUV_UNITS

    def summary(self) -> dict[str, Any]:
        """Facts safe to report (``medreg inspect``, transform): no weight, dose, dates or times."""
        lo, hi = self.slope_range
        out: dict[str, Any] = {
            "units": self.units or "(missing)",
            "units_meaning": UNITS_MEANING.get(self.units, "unknown"),
            "suv_type": self.suv_type or "(missing)",
            "decay_correction": self.decay_correction or "(missing)",
            "corrected": list(self.corrected),
            "rescale_slope_range": [lo, hi],
            "distinct_slopes": self.distinct_slopes,
            "values": ("SUV as stored: no dose/weight factor to apply" if self.is_suv
                       else "not SUV: the card must say how to convert (intensity.suv_conversion)"),
        }
        if self.disagreement:
            out["problem"] = self.disagreement
        return out


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read(path: str):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ReadError(f"cannot read PET header {Path(path).name}: {type(exc).__name__}: {exc}", file=path,
                        hint="the file is truncated or not DICOM; re-download it") from exc


def read_pet_facts(files: Sequence[str]) -> PetFacts:
    """Units, SUV type, decay correction and slopes of a PT series (every file's header is read)."""
    if not files:
        raise ValueError("read_pet_facts needs at least one file")
    heads = [_read(str(f)) for f in files]
    first = heads[0]
    units = str(first.get("Units", "") or "").strip().upper()
    suv_type = str(first.get("SUVType", "") or "").strip().upper()
    disagreement = ""
    for f, ds in zip(files, heads, strict=True):
        u = str(ds.get("Units", "") or "").strip().upper()
        t = str(ds.get("SUVType", "") or "").strip().upper()
        if (u, t) != (units, suv_type):
            disagreement = (f"{Path(f).name} has Units {u or '-'} / SUVType {t or '-'} but {Path(files[0]).name} has "
                            f"{units or '-'} / {suv_type or '-'}")
            break
    slopes = np.array([_float(ds.get("RescaleSlope")) or 1.0 for ds in heads])
    intercepts = tuple(sorted({_float(ds.get("RescaleIntercept")) or 0.0 for ds in heads}))
    corrected = first.get("CorrectedImage") or []
    corrected = (corrected,) if isinstance(corrected, str) else tuple(str(c) for c in corrected)
    radio = (first.get("RadiopharmaceuticalInformationSequence") or [None])[0]
    return PetFacts(
        first_file=str(files[0]),
        files=len(files),
        units=units,
        suv_type=suv_type,
        decay_correction=str(first.get("DecayCorrection", "") or "").strip().upper(),
        corrected=corrected,
        slope_range=(float(slopes.min()), float(slopes.max())),
        distinct_slopes=int(np.unique(slopes).size),
        intercepts=intercepts,
        disagreement=disagreement,
        weight_kg=_float(first.get("PatientWeight")),
        dose_bq=_float(radio.get("RadionuclideTotalDose")) if radio is not None else None,
        half_life_s=_float(radio.get("RadionuclideHalfLife")) if radio is not None else None,
        injection_datetime=str(radio.get("RadiopharmaceuticalStartDateTime", "") or "") if radio is not None else "",
        injection_time=str(radio.get("RadiopharmaceuticalStartTime", "") or "") if radio is not None else "",
        series_date=str(first.get("SeriesDate", "") or first.get("AcquisitionDate", "") or ""),
        series_time=str(first.get("SeriesTime", "") or first.get("AcquisitionTime", "") or ""),
    )


# --- time arithmetic (DICOM DA / TM / DT) ----------------------------------------------------------------

def _tm_seconds(tm: str) -> float | None:
    """DICOM TM ``HHMMSS.FFFFFF`` (also ``HH:MM:SS``) -> seconds after midnight."""
    t = tm.strip().replace(":", "")
    if len(t) < 2 or not t[:2].isdigit():
        return None
    try:
        h = int(t[:2])
        m = int(t[2:4]) if len(t) >= 4 else 0
        s = float(t[4:]) if len(t) > 4 else 0.0
    except ValueError:
        return None
    return h * 3600 + m * 60 + s


def _dt(date: str, tm: str) -> datetime | None:
    date = date.strip()
    secs = _tm_seconds(tm)
    if len(date) != 8 or not date.isdigit() or secs is None:
        return None
    try:
        day = datetime.strptime(date, "%Y%m%d")
    except ValueError:
        return None
    return day + timedelta(seconds=secs)


def uptake_seconds(f: PetFacts) -> tuple[float, str]:
    """Seconds from injection to the series start, and how they were found.

    RadiopharmaceuticalStartDateTime against SeriesDate+SeriesTime first; when that is missing or not
    within (0, 24 h) (de-identification shifts dates inconsistently), the times of day
    RadiopharmaceuticalStartTime and SeriesTime on one day.  Raises ReadError when neither is usable.
    """
    how = ""
    inj = f.injection_datetime.strip()
    series = _dt(f.series_date, f.series_time)
    inj_dt = _dt(inj[:8], inj[8:]) if len(inj) >= 10 else None
    if series is not None and inj_dt is not None:
        d = (series - inj_dt).total_seconds()
        if 0 < d < 86400:
            return d, "RadiopharmaceuticalStartDateTime to SeriesDate/SeriesTime"
        side = "after" if d <= 0 else "before"
        how = f"; RadiopharmaceuticalStartDateTime is {abs(d) / 3600:.1f} h {side} the series (dates shifted?)"
    t_inj, t_series = _tm_seconds(f.injection_time), _tm_seconds(f.series_time)
    if t_inj is not None and t_series is not None and 0 < t_series - t_inj < 86400:
        return t_series - t_inj, "RadiopharmaceuticalStartTime to SeriesTime (one day)" + how
    raise ReadError(
        f"{Path(f.first_file).name}: no usable injection-to-scan time for the decay correction "
        f"(RadiopharmaceuticalStartDateTime / RadiopharmaceuticalStartTime vs SeriesTime){how}",
        file=f.first_file,
        hint="restore the radiopharmaceutical start time and series time, or convert the series to SUV upstream",
    )


# --- the rule ----------------------------------------------------------------------------------------------

def _refuse(f: PetFacts, conversion: str) -> ReadError:
    name = Path(f.first_file).name
    meaning = UNITS_MEANING.get(f.units, "unknown units")
    if f.units == "BQML":
        hint = ("if these are Bq/ml from the scanner, set the card's intensity.suv_conversion: bqml_to_bw (body-weight "
                "SUV from PatientWeight, RadionuclideTotalDose, RadionuclideHalfLife and DecayCorrection), or "
                "convert the series to SUV upstream")
    else:
        hint = ("no SUV can be derived from these values: export the series as SUV (Units GML) or as Bq/ml "
                "(Units BQML) from the scanner or a PET toolkit")
    asked = f" (card asks for {conversion})" if conversion != "none" else ""
    return ReadError(
        f"{name}: PET values are in Units {f.units or '(missing)'} ({meaning}), not SUV{asked}; the pipeline shows "
        "PET in SUV and does not guess a conversion",
        file=f.first_file,
        hint=hint,
    )


def _required(f: PetFacts) -> tuple[float, float, float]:
    missing = [tag for tag, v in (("PatientWeight", f.weight_kg), ("RadionuclideTotalDose", f.dose_bq),
                                  ("RadionuclideHalfLife", f.half_life_s)) if v is None or v <= 0]
    if missing:
        raise ReadError(
            f"{Path(f.first_file).name}: cannot compute body-weight SUV: {', '.join(missing)} missing or not positive",
            file=f.first_file,
            hint="restore the tag(s) from the original series, or convert the series to SUV upstream",
        )
    return float(f.weight_kg or 0), float(f.dose_bq or 0), float(f.half_life_s or 0)


def bqml_to_bw_factor(f: PetFacts) -> tuple[float, str]:
    """Factor turning Bq/ml into body-weight SUV (g/ml), and a note saying how it was found."""
    weight_kg, dose, half_life = _required(f)
    if f.decay_correction == "ADMIN":
        return weight_kg * 1000.0 / dose, "decay correction ADMIN (images corrected to injection): no decay factor"
    if f.decay_correction == "START":
        uptake, how = uptake_seconds(f)
        decayed = dose * math.exp(-math.log(2) * uptake / half_life)
        return weight_kg * 1000.0 / decayed, f"decay correction START: dose decayed over {uptake:.0f} s ({how})"
    raise ReadError(
        f"{Path(f.first_file).name}: DecayCorrection is {f.decay_correction or '(missing)'}; body-weight SUV is only "
        "computed for images decay-corrected to injection (ADMIN) or to the series start (START)",
        file=f.first_file,
        hint="convert the series to SUV upstream (per-frame decay correction needs the frame reference times)",
    )


def to_suv(
    array: np.ndarray, facts: PetFacts, conversion: str = "none"
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """The rescaled PT ``array`` in SUV, with notes and the facts for the study's transform.

    ``conversion`` is the card's ``intensity.suv_conversion``.  Raises ReadError (file + fix) when the
    values are not SUV and the card does not say how to convert them, or when the series disagrees
    with itself.
    """
    if conversion not in CONVERSIONS:
        raise ValueError(f"unknown suv_conversion {conversion!r}; known: {', '.join(CONVERSIONS)}")
    name = Path(facts.first_file).name
    if facts.disagreement:
        raise ReadError(f"PET series of {name}: {facts.disagreement}", file=facts.first_file,
                        hint="one series must have one kind of value; the folder mixes series or exports")
    lo, hi = facts.slope_range
    slopes = f"per-slice RescaleSlope {lo:.3g}..{hi:.3g} ({facts.distinct_slopes} distinct) applied"
    info: dict[str, Any] = {"pet_units": facts.units, "suv_type": facts.suv_type or "-"}
    if facts.is_suv:
        notes = [f"PET values already SUV (Units {facts.units}, SUVType {facts.suv_type or '-'}); {slopes}; "
                 "no dose/weight factor applied"]
        if conversion != "none":
            notes.append(f"card intensity.suv_conversion {conversion} not applied: the values are SUV already")
        info["suv"] = "as stored"
        return array, notes, info
    if conversion == "bqml_to_bw" and facts.units == "BQML":
        factor, how = bqml_to_bw_factor(facts)
        out = np.asarray(array, dtype=np.float32) * np.float32(factor)
        info.update({"suv": "bw from BQML", "suv_type": "BW"})
        return out, [f"PET Bq/ml converted to body-weight SUV ({how}); {slopes}"], info
    raise _refuse(facts, conversion)


# --- reporting (medreg inspect) ------------------------------------------------------------------------------

def pet_summary(files: Sequence[str]) -> dict[str, Any]:
    """:meth:`PetFacts.summary` of a PT series' files, or ``{"problem": ...}`` when the headers cannot be read."""
    try:
        return read_pet_facts(files).summary()
    except ReadError as exc:
        return {"problem": str(exc)}


def format_pet_summary(d: dict[str, Any]) -> str:
    """One line for a terminal: units, SUV type, decay correction, slope range, what the values are."""
    if "units" not in d:
        return f"PET values: {d.get('problem', 'unknown')}"
    lo, hi = d["rescale_slope_range"]
    text = (f"PET values: Units {d['units']} ({d['units_meaning']}), SUVType {d['suv_type']}, decay correction "
            f"{d['decay_correction']}, RescaleSlope {lo:.3g}..{hi:.3g} ({d['distinct_slopes']} distinct) "
            f"-> {d['values']}")
    return text + (f"; problem: {d['problem']}" if d.get("problem") else "")
