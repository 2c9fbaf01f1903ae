"""Attribute matching of PS3.4 C.2.2.2, shared by QIDO-RS and C-FIND (layer 1).

Patterns are what a query carries: single value, wildcards `*` and `?`, date/time
ranges `lo-hi`, UID lists (backslash or comma separated). `row_matches` applies them to a
catalogue row (records.InstanceRow fields) and its patient row.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from typing import Callable


def match_text(value: str, pattern: str, fold: bool = False) -> bool:
    if pattern in ("", "*"):
        return True
    if fold:
        value, pattern = value.lower(), pattern.lower()
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return value == pattern


def match_date(value: str, pattern: str) -> bool:
    if "-" not in pattern:
        return value == pattern
    lo, _, hi = pattern.partition("-")
    if not value:
        return False
    return (not lo or value >= lo) and (not hi or value <= hi)


def match_uids(value: str, pattern: str) -> bool:
    return value in uid_list(pattern)


def uid_list(pattern: str) -> list[str]:
    return [p.strip() for p in pattern.replace("\\", ",").split(",")]


def _text_test(pattern: str, fold: bool = False) -> Callable[[str], bool]:
    """match_text(value, pattern, fold) for one pattern, its work done once."""
    if pattern in ("", "*"):
        return lambda value: True
    if fold:
        pattern = pattern.lower()
    if "*" in pattern or "?" in pattern:
        rx = re.compile(fnmatch.translate(pattern.replace("[", "[[]")))
        return (lambda value: rx.match(value.lower()) is not None) if fold else (lambda value: rx.match(value) is not None)
    return (lambda value: value.lower() == pattern) if fold else (lambda value: value == pattern)


def fold(text: str) -> str:
    """Case and accents folded away: "Müller" and "MULLER" compare equal."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def _name_test(pattern: str, fuzzy: bool) -> Callable[[str], bool]:
    """A person name. Literal: the whole value (wildcards allowed), case-insensitive.
    Fuzzy (QIDO's fuzzymatching=true): each word of the query begins some word of the name,
    in any order of components, case and accents ignored ("marie curie" finds "Curie^Marie")."""
    if not fuzzy:
        return _text_test(pattern, fold=True)
    wanted = [re.compile(fnmatch.translate(w.replace("[", "[[]") + "*"))
              for w in re.split(r"[\^=\s,]+", fold(pattern)) if w and w != "*"]

    def test(value: str) -> bool:
        words = [w for w in re.split(r"[\^=\s,]+", fold(value)) if w]
        return all(any(rx.match(w) for w in words) for rx in wanted)
    return test


def _date_test(pattern: str) -> Callable[[str], bool]:
    return lambda value: match_date(value, pattern)


def _uids_test(pattern: str) -> Callable[[str], bool]:
    wanted = frozenset(uid_list(pattern))
    return wanted.__contains__


def _number_test(pattern: str) -> Callable[[str], bool]:
    return lambda value: value == pattern


# keyword -> (its value in a catalogue row and its patient, how a pattern becomes a test)
_FIELDS: dict[str, tuple[Callable[[dict, dict], str], Callable[[str], Callable[[str], bool]]]] = {
    "PatientID": (lambda r, p: r["patient_id"], _text_test),
    "PatientName": (lambda r, p: p.get("name") or "", _name_test),
    "PatientBirthDate": (lambda r, p: p.get("birth_date") or "", _date_test),
    "PatientSex": (lambda r, p: p.get("sex") or "", _text_test),
    "StudyDate": (lambda r, p: r.get("study_date") or "", _date_test),
    "StudyTime": (lambda r, p: (r.get("study_time") or "").replace(":", ""), lambda v: _date_test(v.replace(":", ""))),
    "StudyDescription": (lambda r, p: r.get("study_description") or "", lambda v: _text_test(v, fold=True)),
    "ReferringPhysicianName": (lambda r, p: r.get("referring_physician") or "", _name_test),
    "SeriesDescription": (lambda r, p: r.get("series_description") or "", lambda v: _text_test(v, fold=True)),
    "BodyPartExamined": (lambda r, p: r.get("body_part") or "", _text_test),
    "InstitutionName": (lambda r, p: r.get("institution_name") or "", lambda v: _text_test(v, fold=True)),
    "StudyInstanceUID": (lambda r, p: r["study_instance_uid"], _uids_test),
    "AccessionNumber": (lambda r, p: r.get("accession_number") or "", _text_test),
    "StudyID": (lambda r, p: r.get("study_id") or "", _text_test),
    "SeriesInstanceUID": (lambda r, p: r["series_instance_uid"], _uids_test),
    "Modality": (lambda r, p: r.get("modality") or "", _text_test),
    "SeriesNumber": (lambda r, p: str(r.get("series_number") or ""), _number_test),
    "SOPInstanceUID": (lambda r, p: r["sop_instance_uid"], _uids_test),
    "SOPClassUID": (lambda r, p: r["sop_class_uid"], _uids_test),
    "InstanceNumber": (lambda r, p: str(r.get("instance_number") or ""), _number_test),
}


_NAMES = ("PatientName", "ReferringPhysicianName")


def matcher(f: dict, fuzzy: bool = False) -> Callable[[dict, dict], bool]:
    """A test of a catalogue row (and its patient) against every filter {keyword: pattern},
    the patterns prepared once (a search calls it for every row). Keywords this table
    does not know are not tested here. `fuzzy`: person names match word by word."""
    tests = [(_FIELDS[k][0], _FIELDS[k][1](v, fuzzy) if k in _NAMES else _FIELDS[k][1](v))
             for k, v in f.items() if k in _FIELDS]

    def match(row: dict, patient: dict) -> bool:
        return all(test(get(row, patient)) for get, test in tests)
    return match


def row_matches(row: dict, patient: dict, f: dict, fuzzy: bool = False) -> bool:
    """Does the catalogue row (and its patient) meet every filter {keyword: pattern}?"""
    return matcher(f, fuzzy)(row, patient)


def study_hints(f: dict) -> dict:
    """The study filters the catalogue's indexes narrow down (an exact AccessionNumber, a
    StudyDate or range), as search arguments; the row test still checks every row."""
    hints = {}
    accession = f.get("AccessionNumber")
    if accession and "*" not in accession and "?" not in accession:
        hints["accession"] = accession
    date = f.get("StudyDate") or ""
    if re.fullmatch(r"[0-9]{8}|[0-9]{8}-|-[0-9]{8}|[0-9]{8}-[0-9]{8}", date):  # else: the row test alone
        lo, dash, hi = date.partition("-")
        hints["study_dates"] = (lo, hi) if dash else (date, date)
    return hints
