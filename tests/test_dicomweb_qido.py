"""QIDO-RS on a running kit: every matching key, fuzzymatching, includefield (from stored
headers), the study attributes of unscoped searches, and 400 for invalid values (PS3.18)."""

from __future__ import annotations

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from fieldkit.web import dicomweb
from fixtures.dcmtk import pydicom_file
from kitproc import KitProcess, init_kit

A = dict(PatientName="Curie^Marie", PatientID="PROBE-A", PatientSex="F", PatientBirthDate="19670107",
         PatientAge="057Y", StudyDescription="Lung left", ReferringPhysicianName="Müller^Hans",
         StudyDate="20240105", StudyTime="083000", AccessionNumber="ACC1", StudyID="S1", Modality="US",
         SeriesDescription="B-lines", BodyPartExamined="CHEST", InstitutionName="Field Hospital North",
         SeriesNumber=1, InstanceNumber=1, OperatorsName="Nurse^One")
B = dict(PatientName="Lister^Joseph", PatientID="PROBE-B", PatientSex="M", PatientBirthDate="19500505",
         StudyDescription="FAST abdomen", ReferringPhysicianName="Nightingale^Florence",
         StudyDate="20240320", StudyTime="141500", AccessionNumber="ACC2", StudyID="S2", Modality="OT",
         SeriesDescription="Morison pouch", BodyPartExamined="ABDOMEN", InstitutionName="Base Camp South",
         SeriesNumber=2, InstanceNumber=7, OperatorsName="Medic^Two")


def _dataset(attrs: dict) -> pydicom.Dataset:
    ds = pydicom.dcmread(pydicom_file("examples_rgb_color.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    proc = KitProcess(init_kit(tmp_path_factory.mktemp("qido") / "kit")).start()
    session = requests.Session()
    session.verify, session.trust_env = proc.ca, False
    session.headers["Authorization"] = f"Bearer {proc.token('dicomweb-client')}"
    proc.client = DICOMwebClient(url=f"{proc.url}/dicom-web", session=session)
    proc.a, proc.b = _dataset(A), _dataset(B)
    proc.client.store_instances([proc.a, proc.b])
    proc.session = session
    yield proc
    proc.stop()


def _get(kit, path, **params):
    return kit.session.get(f"{kit.url}/dicom-web{path}", params=params, timeout=30)


def _studies_of(kit, path, **params):
    r = _get(kit, path, **params)
    assert r.status_code == 200, (params, r.status_code, r.text[:300])
    assert "Warning" not in r.headers, r.headers["Warning"]
    by_uid = {kit.a.StudyInstanceUID: "A", kit.b.StudyInstanceUID: "B"}
    return sorted(by_uid[item["0020000D"]["Value"][0]] for item in r.json())


@pytest.mark.parametrize("path, params, want", [
    ("/studies", {"PatientName": "curie^marie"}, ["A"]),
    ("/studies", {"PatientName": "LIST*"}, ["B"]),
    ("/studies", {"PatientBirthDate": "19600101-"}, ["A"]),
    ("/studies", {"PatientSex": "M"}, ["B"]),
    ("/studies", {"StudyDate": "20240301-20240331"}, ["B"]),
    ("/studies", {"00080020": "20240105"}, ["A"]),
    ("/studies", {"StudyTime": "-0900"}, ["A"]),
    ("/studies", {"ModalitiesInStudy": "OT"}, ["B"]),
    ("/studies", {"AccessionNumber": "ACC2"}, ["B"]),
    ("/studies", {"StudyID": "S1"}, ["A"]),
    ("/studies", {"StudyDescription": "fast*"}, ["B"]),
    ("/studies", {"ReferringPhysicianName": "müller^hans"}, ["A"]),
    ("/series", {"Modality": "US"}, ["A"]),
    ("/series", {"SeriesNumber": "2"}, ["B"]),
    ("/series", {"SeriesDescription": "b-lines"}, ["A"]),
    ("/series", {"BodyPartExamined": "ABDOMEN"}, ["B"]),
    ("/series", {"00180015": "CHEST"}, ["A"]),
    ("/series", {"InstitutionName": "field*"}, ["A"]),
    ("/studies", {"InstitutionName": "base camp south"}, ["B"]),
    ("/instances", {"InstanceNumber": "7"}, ["B"]),
    ("/instances", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, []),
    ("/instances", {"BodyPartExamined": "CHEST", "InstanceNumber": "1"}, ["A"]),
])
def test_each_matching_key_selects_what_it_names(kit, path, params, want):
    assert _studies_of(kit, path, **params) == want


def test_uid_and_patient_id_keys(kit):
    a, b = kit.a, kit.b
    assert _studies_of(kit, "/studies", StudyInstanceUID=f"{a.StudyInstanceUID},{b.StudyInstanceUID}") == ["A", "B"]
    assert _studies_of(kit, "/series", SeriesInstanceUID=b.SeriesInstanceUID) == ["B"]
    assert _studies_of(kit, "/instances", SOPInstanceUID=a.SOPInstanceUID) == ["A"]
    assert _studies_of(kit, "/instances", SOPClassUID=a.SOPClassUID) == ["A", "B"]
    kit_pid = _get(kit, "/studies", StudyInstanceUID=a.StudyInstanceUID).json()[0]["00100020"]["Value"][0]
    assert kit_pid != "PROBE-A"  # the kit's own patient id is what is matched and returned
    assert _studies_of(kit, "/studies", PatientID=kit_pid) == ["A"]


def test_fuzzy_matching_of_person_names(kit):
    for params, want in (({"PatientName": "marie"}, ["A"]), ({"PatientName": "marie curie"}, ["A"]),
                         ({"PatientName": "jos lis"}, ["B"]), ({"ReferringPhysicianName": "hans MULLER"}, ["A"]),
                         ({"ReferringPhysicianName": "florence"}, ["B"]), ({"PatientName": "pierre"}, [])):
        assert _studies_of(kit, "/studies", fuzzymatching="true", **params) == want, params
    # without it, the whole name is matched literally (accents count)
    assert _studies_of(kit, "/studies", PatientName="marie") == []
    assert _studies_of(kit, "/studies", ReferringPhysicianName="muller^hans") == []
    # and through a third-party client
    found = kit.client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "curie"})
    assert [s["0020000D"]["Value"][0] for s in found] == [kit.a.StudyInstanceUID]


def test_includefield_reads_what_the_catalogue_lacks_from_stored_headers(kit):
    a = kit.a
    study = _get(kit, "/studies", StudyInstanceUID=a.StudyInstanceUID, includefield="PatientAge,00081080").json()[0]
    assert study["00101010"] == {"vr": "AS", "Value": ["057Y"]}
    assert "00081080" not in study  # not in the header: absent, as PS3.18 allows
    series = _get(kit, "/series", SeriesInstanceUID=a.SeriesInstanceUID, includefield="OperatorsName").json()[0]
    assert series["00081070"]["Value"] == [{"Alphabetic": "Nurse^One"}]
    found = kit.client.search_for_instances(search_filters={"SOPInstanceUID": a.SOPInstanceUID},
                                            fields=["OperatorsName", "InstitutionName"])
    assert found[0]["00080080"]["Value"] == ["Field Hospital North"]
    assert found[0]["00081070"]["Value"] == [{"Alphabetic": "Nurse^One"}]
    # all: every attribute of the instance header; study level: the study-level ones
    item = _get(kit, "/instances", SOPInstanceUID=a.SOPInstanceUID, includefield="all").json()[0]
    assert item["00280004"]["Value"] == [a.PhotometricInterpretation] and item["00080070"]
    assert "7FE00010" not in item
    study = _get(kit, "/studies", StudyInstanceUID=a.StudyInstanceUID, includefield="all").json()[0]
    assert study["00101010"]["Value"] == ["057Y"] and "00080018" not in study and "00081070" not in study
    series = _get(kit, "/series", SeriesInstanceUID=a.SeriesInstanceUID, includefield="all").json()[0]
    assert series["00180015"]["Value"] == ["CHEST"] and series["00081070"]["Value"][0]["Alphabetic"] == "Nurse^One"
    assert "00080018" not in series


def test_unscoped_series_and_instances_carry_their_study_and_series(kit):
    a = kit.a
    series = _get(kit, "/series", SeriesInstanceUID=a.SeriesInstanceUID).json()[0]
    assert series["00081030"]["Value"] == ["Lung left"] and series["00080020"]["Value"] == ["20240105"]
    assert series["00100010"]["Value"] == [{"Alphabetic": "Curie^Marie"}]
    assert series["00081190"]["Value"][0].endswith(f"/studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}")
    scoped = _get(kit, f"/studies/{a.StudyInstanceUID}/series").json()[0]
    assert "00081030" not in scoped and "00100010" not in scoped and scoped["0008103E"]["Value"] == ["B-lines"]
    inst = _get(kit, "/instances", SOPInstanceUID=a.SOPInstanceUID).json()[0]
    assert inst["00081030"]["Value"] == ["Lung left"] and inst["0008103E"]["Value"] == ["B-lines"]
    assert inst["00080050"]["Value"] == ["ACC1"] and inst["00200011"]["Value"] == [1]
    in_study = _get(kit, f"/studies/{a.StudyInstanceUID}/instances").json()[0]
    assert "00081030" not in in_study and in_study["0008103E"]["Value"] == ["B-lines"]
    in_series = _get(kit, f"/studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/instances").json()[0]
    assert "00081030" not in in_series and "0008103E" not in in_series
    assert in_series["00080018"]["Value"] == [a.SOPInstanceUID]


@pytest.mark.parametrize("params, reason", [
    ({"StudyDate": "2024-01-05"}, "StudyDate"),
    ({"StudyDate": "-"}, "StudyDate"),
    ({"PatientBirthDate": "yesterday"}, "PatientBirthDate"),
    ({"StudyTime": "8am"}, "StudyTime"),
    ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
    ({"SOPInstanceUID": "1." + "2" * 70}, "SOPInstanceUID"),
    ({"SeriesNumber": "two"}, "SeriesNumber"),
    ({"InstanceNumber": "1.5"}, "InstanceNumber"),
    ({"limit": "-1"}, "limit"),
    ({"offset": "x"}, "offset"),
    ({"fuzzymatching": "yes"}, "fuzzymatching"),
    ({"includefield": "NoSuchAttribute"}, "includefield"),
    ({"includefield": 'Bad"\r\nX-Injected: 1'}, "includefield"),
    ({"NoSuchKey": "x"}, "NoSuchKey"),
])
def test_invalid_query_values_are_a_400_naming_the_key(kit, params, reason):
    for path in ("/studies", "/series", "/instances"):
        r = _get(kit, path, **params)
        assert r.status_code == 400, (path, params, r.status_code)
        assert reason in r.json()["error"]


def test_a_key_the_kit_cannot_match_is_named_in_a_warning(kit):
    r = _get(kit, "/studies", OperatorsName="Nurse*")
    assert r.status_code == 200 and len(r.json()) == 2
    assert r.headers["Warning"] == ('299 fieldkit "The following query keys are not supported and were '
                                    'ignored: OperatorsName"')


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fieldkit.dicom.matching import row_matches  # noqa: E402

_ROW = {"patient_id": "T-1", "study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.5", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.6.1", "study_date": "20240105",
        "study_time": "083000", "referring_physician": "Müller^Hans", "study_description": "Lung",
        "series_number": "1", "instance_number": "1", "modality": "US", "body_part": "CHEST",
        "institution_name": "Field", "accession_number": "A1", "study_id": "S1", "series_description": "B"}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(dicomweb._STUDY_KEYS | dicomweb._SERIES_KEYS | dicomweb._INSTANCE_KEYS)),
       st.text(max_size=40), st.booleans())
def test_any_query_value_is_refused_with_a_reason_or_matched_without_error(key, value, fuzzy):
    problem = dicomweb._invalid(key, value)
    if problem is None:
        assert row_matches(_ROW, {"name": "Curie^Marie", "birth_date": "19670107", "sex": "F"},
                           {key: value}, fuzzy) in (True, False)
    else:
        assert isinstance(problem, str) and problem
