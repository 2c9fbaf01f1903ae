"""An analysis as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report) via highdicom.

Each clinical model gives one measurement group (TID 1501) that references the source
instance and the frames it read, names the algorithm once for the group (name, version and
model SHA-256 as a parameter), and carries its results: per-frame B-line counts, the clip pattern
and lung sliding (present, absent, or not assessable with the reason), or
free-fluid presence and area, or a "not assessable" evaluation with the reason (a TEXT
"Reason not assessable" property of the Assessability evaluation).

Handheld exports often lack attributes highdicom insists on (type-2 patient and study
attributes, which it copies from the evidence). The SR is built against a header-only copy
of the source with those filled in as empty values, which is what type 2 allows, so a
sparse export still gets its report. No 3D coordinates are used, so a missing Frame of
Reference does not matter. A source's AccessionNumber or StudyID that is not a valid SH
value (two values such as `PR\\US`, over 16 characters) is left empty rather than copied.
"""

from __future__ import annotations

import copy
import datetime
import functools
import logging
import re
import warnings

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..dicom.uids import derived_uid
from .runner import Analysis

# highdicom logs every module it copies at INFO, naming the source's UIDs: a cost per
# report, and nothing an operator needs
logging.getLogger("highdicom").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

# highdicom warns about odd person names by quoting them: patient data must not reach a log
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name",
                        category=UserWarning, module=r"highdicom\.")

SCHEME = "99FIELDKIT"  # private coding scheme (PS3.16: "99" prefix) for concepts with no standard code


def _code(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


BLINE_COUNT = _code("BLC", "B-line count")
MAX_BLINE_COUNT = _code("BLMAX", "Maximum B-line count in a frame")
LUNG_PATTERN = _code("LPAT", "Lung ultrasound pattern")
A_PATTERN = _code("APAT", "A-line pattern")
B_PATTERN = _code("BPAT", "B-line pattern")
CONFLUENT = _code("BCONF", "Confluent B-lines")
# neither DCM (PS3.16) nor the SNOMED CT subset DICOM uses has a concept for the lung
# sliding sign, so it is coded in the private scheme like the B-line concepts; its value is
# DCM Present / Absent, or Not assessable with the reason. "Absent" is not coded as
# pneumothorax (SCT 36118008): absent sliding does not prove one (adhesions, apnoea).
LUNG_SLIDING = _code("LSLIDE", "Lung sliding")
FREE_FLUID = _code("FFL", "Free fluid")
ASSESSABILITY = _code("ASSESS", "Assessability")
NOT_ASSESSABLE = _code("NA", "Not assessable")
ASSESSABLE = _code("OK", "Assessable")
PLEURA_ROW = _code("PLROW", "Pleural line row")
NA_REASON = _code("NAREASON", "Reason not assessable")
# two different figures, each under its own name: the gate's probability of the view
# (not of the finding), and a probability of the finding itself when the model gives one
VIEW_PROBABILITY = _code("VIEWP", "View probability (view/quality gate, not of the finding)")
FINDING_PROBABILITY = _code("FINDP", "Probability of the finding")
UNIT_PERCENT = CodedConcept(value="%", scheme_designator="UCUM", meaning="percent")
UNIT_LINES = CodedConcept(value="{lines}", scheme_designator="UCUM", meaning="lines")
UNIT_PX = CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="pixels")

TYPE2 = {  # type-2 attributes highdicom copies from the evidence: present, possibly empty
    "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
    "StudyID": "", "AccessionNumber": "", "ReferringPhysicianName": "",
    "StudyDate": "", "StudyTime": "",
}


DATES_TIMES = ("StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "ContentDate", "ContentTime",
               "PatientBirthDate", "AcquisitionDate", "AcquisitionTime")


def _date_time(keyword: str, value) -> str | None:
    """A DA/TM value highdicom will accept: as sent when valid, repaired when it is an old
    ACR-NEMA form ("14:04:38", "2001.01.02"), else None (dropped rather than invented)."""
    from pydicom.valuerep import DA, TM
    kind = DA if keyword.endswith("Date") else TM
    text = str(value or "").strip()
    stripped = text.replace(":", "").replace(".", "").replace("-", "") if kind is DA else text.replace(":", "")
    for candidate in (stripped, text):
        try:
            if candidate == "" or kind(candidate) is not None:
                return candidate
        except ValueError:
            continue
    return None


MINIMAL = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
           "PatientID", "IssuerOfPatientID", "NumberOfFrames")


def evidence_header(ds: Dataset, minimal: bool = False) -> Dataset:
    """Header-only copy of the source with missing type-2 attributes present and empty.

    minimal: only the identifying attributes, for a source whose other attributes are too
    malformed for highdicom (the report then carries empty patient/study descriptors)."""
    header = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0:  # pixel data: the SR only references it
            continue
        if minimal and elem.keyword not in MINIMAL:
            continue
        header.add(copy.deepcopy(elem))
    header.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    for keyword in ("AccessionNumber", "StudyID"):
        # a source's invalid value (`PR\\US`, too long) is not passed on: left empty (type 2),
        # and said so in the log (naming the attribute, never its value)
        if keyword in header and not _valid_sh(header[keyword]):
            header[keyword].value = ""
            log.warning("the source's %s is not a valid SH value (one value, 16 characters at most): "
                        "left empty in the report", keyword)
    for keyword in COPIED:
        # any other attribute highdicom copies into the report: checked against its VR
        # (length, characters, number of values); an invalid one is left empty, with a note
        if keyword in header and not _valid_copy(header[keyword]):
            header[keyword].value = ""
            log.warning("the source's %s is not a valid %s value: left empty in the report",
                        keyword, header[keyword].VR)
    for keyword, empty in TYPE2.items():
        if keyword not in header or header.get(keyword) is None:
            setattr(header, keyword, empty)
    for keyword in DATES_TIMES:
        if keyword in header:
            fixed = _date_time(keyword, header[keyword].value)
            if fixed is None:
                del header[keyword]
            else:
                setattr(header, keyword, fixed)
    if not header.get("StudyDate"):
        # highdicom formats the study date/time; an empty one is valid DICOM but trips it
        now = datetime.datetime.now()
        header.StudyDate = header.get("ContentDate") or header.get("SeriesDate") or now.strftime("%Y%m%d")
        header.StudyTime = header.get("ContentTime") or header.get("SeriesTime") or now.strftime("%H%M%S")
    return header


def report_uid(ds: Dataset, analysis: Analysis, uid_root: str = "2.25") -> str:
    """The SR's SOP Instance UID: the same for the same source and the same models."""
    models = ",".join(f"{r.model['name']}={r.model['sha256']}" for r in analysis.results)
    return derived_uid(uid_root, str(ds.SOPInstanceUID), models, "sr")


@functools.lru_cache(maxsize=32)
def _algorithm(name: str, version: str, sha256: str) -> hd.sr.AlgorithmIdentification:
    """The model's identification, made once per model and named once per measurement
    group (TID 1501 "Algorithm Identification"), which covers every measurement of the
    group: repeating it on each measurement tripled the content items, and building and
    copying content items is most of what a report costs."""
    return hd.sr.AlgorithmIdentification(name=name, version=version, parameters=[f"sha256={sha256}"])


def _assessability(assessable: bool, reason: str) -> hd.sr.QualitativeEvaluation:
    """The Assessability evaluation; "Not assessable" carries its reason (wrong view,
    Doppler, decode failure...) as a TEXT property, so the hospital sees why."""
    evaluation = hd.sr.QualitativeEvaluation(ASSESSABILITY, ASSESSABLE if assessable else NOT_ASSESSABLE)
    return _with_reason(evaluation, reason) if not assessable else evaluation


def _with_reason(evaluation: hd.sr.QualitativeEvaluation, reason: str) -> hd.sr.QualitativeEvaluation:
    """The evaluation with a TEXT "Reason not assessable" property (none for no reason)."""
    if reason:
        evaluation[0].ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
            name=NA_REASON, value=reason[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)])
    return evaluation


def _sliding(sliding: dict) -> hd.sr.QualitativeEvaluation:
    """Lung sliding present / absent, or not assessable with its reason (as _assessability)."""
    status = sliding.get("status")
    if status in ("present", "absent"):
        return hd.sr.QualitativeEvaluation(LUNG_SLIDING, codes.DCM.Present if status == "present" else codes.DCM.Absent)
    return _with_reason(hd.sr.QualitativeEvaluation(LUNG_SLIDING, NOT_ASSESSABLE), str(sliding.get("reason") or ""))


# attributes of the source the report carries (dates and times are repaired or dropped
# on their own, in evidence_header)
COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientSex", "StudyID", "AccessionNumber",
          "ReferringPhysicianName", "PatientAge", "StudyDescription")


def _valid_copy(elem) -> bool:
    """A value valid for its VR (pydicom's checks) and, for a single-valued attribute, one value."""
    from pydicom import config
    from pydicom.datadict import dictionary_VM
    from pydicom.valuerep import validate_value
    try:
        if elem.VM > 1 and dictionary_VM(elem.tag) == "1":
            return False
        values = elem.value if elem.VM > 1 else [elem.value]
        for value in values:
            validate_value(elem.VR, "" if value is None else str(value), config.RAISE)
    except (ValueError, KeyError, TypeError):
        return False
    return True


def _source_zone(ds: Dataset) -> datetime.tzinfo:
    """The time zone of the source's dates and times (its TimezoneOffsetFromUTC), else the
    kit's own: a probe in the field keeps the local time the kit keeps."""
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
    match = re.fullmatch(r"([+-])([01][0-9])([0-5][0-9])", offset)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        return datetime.timezone(sign * datetime.timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    return datetime.datetime.now().astimezone().tzinfo


def _valid_sh(elem) -> bool:
    """A value fit for a single-valued SH attribute (AccessionNumber, StudyID): one value
    (`PR\\US` is two), at most 16 characters, no control characters."""
    if elem.VM > 1:
        return False
    text = str(elem.value or "")
    return len(text) <= 16 and "\\" not in text and all(c >= " " for c in text)


def build_sr(ds: Dataset, analysis: Analysis, *, uid_root: str = "2.25", kit_id: str = "",
             manufacturer: str = "fieldkit", device_uid: str | None = None) -> Dataset:
    source_uid = str(ds.SOPInstanceUID)
    evidence = evidence_header(ds)
    frames = analysis.frame_numbers if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None

    groups = []
    for r in analysis.results:
        algo = _algorithm(r.model["name"], r.model["version"], r.model["sha256"])
        source = [hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=str(ds.SOPClassUID), referenced_sop_instance_uid=source_uid,
            referenced_frame_numbers=(r.frames or analysis.frame_numbers or None) if frames else None)]
        site = codes.SCT.Lung if r.task == "lung" else codes.SCT.Abdomen
        evaluations = [_assessability(r.assessable, r.reason)]
        measurements = []
        if r.assessable:
            measurements.append(hd.sr.Measurement(VIEW_PROBABILITY, round(100 * float(r.view_probability), 1),
                                                  UNIT_PERCENT))
            if r.finding_probability is not None:
                measurements.append(hd.sr.Measurement(FINDING_PROBABILITY,
                                                      round(100 * float(r.finding_probability), 1), UNIT_PERCENT))
        if r.assessable and r.task == "lung":
            evaluations.append(hd.sr.QualitativeEvaluation(
                LUNG_PATTERN, B_PATTERN if r.result["pattern"] == "B-line pattern" else A_PATTERN))
            evaluations.append(hd.sr.QualitativeEvaluation(
                CONFLUENT, codes.DCM.Present if r.result.get("confluent") else codes.DCM.Absent))
            if r.result.get("sliding"):
                evaluations.append(_sliding(r.result["sliding"]))
            measurements.append(hd.sr.Measurement(MAX_BLINE_COUNT, float(r.result["max_b_lines"]), UNIT_LINES))
            for fr in r.result["frames"]:
                refs = [hd.sr.SourceImageForMeasurement(str(ds.SOPClassUID), source_uid,
                                                        [fr["frame"]] if frames else None)]
                measurements.append(hd.sr.Measurement(BLINE_COUNT, float(fr["b_lines"]), UNIT_LINES,
                                                      referenced_images=refs))
            measurements.append(hd.sr.Measurement(PLEURA_ROW, float(r.result["pleural_line_row"]), UNIT_PX))
        elif r.assessable and r.task == "fast":
            present = r.result["fluid_present"]
            evaluations.append(hd.sr.QualitativeEvaluation(
                FREE_FLUID, codes.DCM.Present if present else codes.DCM.Absent))
            if r.result.get("fluid_area_cm2") is not None:
                measurements.append(hd.sr.Measurement(codes.SCT.Area, float(r.result["fluid_area_cm2"]),
                                                      codes.UCUM.SquareCentimeter))
            else:
                measurements.append(hd.sr.Measurement(codes.SCT.Area, float(r.result["fluid_area_px"]), UNIT_PX))
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(uid_root, source_uid, r.model["name"], "track"),
                                                         identifier=f"{r.model['name']} {r.model['version']}"),
            finding_type=LUNG_PATTERN if r.task == "lung" else FREE_FLUID,
            algorithm_id=algo, finding_sites=[hd.sr.FindingSite(site)],
            measurements=measurements or None, qualitative_evaluations=evaluations, source_images=source))

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid or derived_uid(uid_root, "fieldkit-device", kit_id), name=f"fieldkit {kit_id}".strip(),
            manufacturer_name=manufacturer))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.Ultrasonography,
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    with warnings.catch_warnings():  # also where a caller reset the filters
        warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent", category=UserWarning)
        try:
            sr = _document(evidence, report, uid_root, source_uid, ds, analysis, manufacturer)
        except (ValueError, TypeError, AttributeError):
            # some attribute of the source that highdicom copies is malformed: report
            # against the identifying attributes only rather than fail the job
            sr = _document(evidence_header(ds, minimal=True), report, uid_root, source_uid, ds, analysis,
                           manufacturer)
    # the report belongs to the same patient record as its source, whatever highdicom copied
    for keyword in ("PatientID", "IssuerOfPatientID"):
        if keyword in ds:
            setattr(sr, keyword, ds.data_element(keyword).value)
    # its own dates and times in the zone of the source's, which it copies, and said so
    now = datetime.datetime.now(_source_zone(ds))
    for prefix in ("Content", "InstanceCreation"):
        if f"{prefix}Date" in sr or prefix == "Content":
            setattr(sr, f"{prefix}Date", now.strftime("%Y%m%d"))
            setattr(sr, f"{prefix}Time", now.strftime("%H%M%S"))
    sr.TimezoneOffsetFromUTC = now.strftime("%z")
    return sr


def _document(evidence, report, uid_root, source_uid, ds, analysis, manufacturer):
    return hd.sr.Comprehensive3DSR(
        evidence=[evidence], content=report,
        series_instance_uid=derived_uid(uid_root, source_uid, "sr-series"),
        series_number=999, sop_instance_uid=report_uid(ds, analysis, uid_root),
        instance_number=1, manufacturer=manufacturer, is_complete=True, is_final=False, is_verified=False,
        series_description="fieldkit AI findings (not for diagnosis)")
