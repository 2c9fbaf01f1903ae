"""Attribute matching of PS3.4 C.2.2.2, shared by QIDO-RS and C-FIND (layer 1).

Patterns are what a query carries: single value, wildcards `*` and `?`, date/time
ranges `lo-hi`, UID lists (backslash or comma separated). `row_matches` applies them to a
catalogue row (records.InstanceRow fields) and its patient row.
"""

from __future__ import annotations

import fnmatch


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


def row_matches(row: dict, patient: dict, f: dict) -> bool:
    """Does the catalogue row (and its patient) meet every filter {keyword: pattern}?
    Keywords this table does not know are not tested here."""
    checks = {
        "PatientID": lambda p: match_text(row["patient_id"], p),
        "PatientName": lambda p: match_text(patient.get("name") or "", p, fold=True),
        "PatientBirthDate": lambda p: match_date(patient.get("birth_date") or "", p),
        "PatientSex": lambda p: match_text(patient.get("sex") or "", p),
        "StudyDate": lambda p: match_date(row.get("study_date") or "", p),
        "StudyTime": lambda p: match_date((row.get("study_time") or "").replace(":", ""), p.replace(":", "")),
        "StudyDescription": lambda p: match_text(row.get("study_description") or "", p, fold=True),
        "ReferringPhysicianName": lambda p: match_text(row.get("referring_physician") or "", p, fold=True),
        "SeriesDescription": lambda p: match_text(row.get("series_description") or "", p, fold=True),
        "StudyInstanceUID": lambda p: match_uids(row["study_instance_uid"], p),
        "AccessionNumber": lambda p: match_text(row.get("accession_number") or "", p),
        "StudyID": lambda p: match_text(row.get("study_id") or "", p),
        "SeriesInstanceUID": lambda p: match_uids(row["series_instance_uid"], p),
        "Modality": lambda p: match_text(row.get("modality") or "", p),
        "SeriesNumber": lambda p: str(row.get("series_number") or "") == p,
        "SOPInstanceUID": lambda p: match_uids(row["sop_instance_uid"], p),
        "SOPClassUID": lambda p: match_uids(row["sop_class_uid"], p),
        "InstanceNumber": lambda p: str(row.get("instance_number") or "") == p,
    }
    return all(checks[k](v) for k, v in f.items() if k in checks)

