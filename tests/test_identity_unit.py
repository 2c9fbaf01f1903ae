"""dicom/identity.py by itself: what the hospital receives as PatientID, its issuer, and the
probe's own ID kept in OtherPatientIDsSequence (the end-to-end matrix is test_identity_matrix)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from fieldkit.dicom.identity import GENERIC_IDS, source_identity, stamp

KIT_ID, KIT_ISSUER = "FK-0042", "FIELDKIT-KIT1"


def dataset(patient_id=None, issuer=None, **more) -> Dataset:
    ds = Dataset()
    if patient_id is not None:
        ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    for keyword, value in more.items():
        setattr(ds, keyword, value)
    return ds


def others(ds) -> list[tuple[str, str | None, str]]:
    return [(o.get("PatientID"), o.get("IssuerOfPatientID"), o.get("TypeOfPatientID"))
            for o in ds.get("OtherPatientIDsSequence", [])]


def test_source_identity_reads_trimmed_values_and_one_letter_sex():
    ds = dataset(" TAG7 ", " VENDOR ", PatientName="Doe^Jane ", PatientBirthDate="19800102", PatientSex="female")
    ident = source_identity(ds)
    assert (ident.patient_id, ident.issuer, ident.name, ident.birth_date, ident.sex) == \
        ("TAG7", "VENDOR", "Doe^Jane", "19800102", "F")
    assert source_identity(dataset(PatientSex="m")).sex == "M"
    blank = source_identity(Dataset())
    assert (blank.patient_id, blank.issuer, blank.name, blank.birth_date, blank.sex) == ("", "", "", "", "")
    empty = dataset(PatientSex="")
    assert source_identity(empty).sex == ""


def test_source_identity_of_an_attribute_present_without_value_is_empty():
    ds = Dataset()
    ds.add_new(0x00100020, "LO", None)
    assert source_identity(ds).patient_id == ""


@pytest.mark.parametrize("value", ["", "0", " anonymous ", "Unknown", "n/a", "NO ID", "test"])
def test_placeholder_ids_are_generic(value):
    assert source_identity(dataset(value)).is_generic


@pytest.mark.parametrize("value", ["TAG7", "00000001", "ANONYMOUS2"])
def test_real_ids_are_not_generic(value):
    assert not source_identity(dataset(value)).is_generic
    assert value not in GENERIC_IDS


def test_already_the_kits_identity_is_left_alone():
    ds = dataset(KIT_ID + " ", KIT_ISSUER)
    assert stamp(ds, KIT_ID, KIT_ISSUER) is False
    assert "OtherPatientIDsSequence" not in ds
    assert ds.PatientID == KIT_ID + " "  # not even rewritten


def test_kit_id_under_a_foreign_issuer_is_restamped_and_the_probe_issuer_kept_aside():
    ds = dataset(KIT_ID, "VENDOR")
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    assert (ds.PatientID, ds.IssuerOfPatientID) == (KIT_ID, KIT_ISSUER)
    assert others(ds) == [(KIT_ID, "VENDOR", "TEXT")]


def test_kit_id_without_issuer_gets_the_kit_issuer_and_nothing_kept_aside():
    ds = dataset(KIT_ID)
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    assert (ds.PatientID, ds.IssuerOfPatientID) == (KIT_ID, KIT_ISSUER)
    assert "OtherPatientIDsSequence" not in ds


def test_a_foreign_id_moves_to_other_ids_with_its_issuer_or_without_one():
    ds = dataset("TAG7", "VENDOR")
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    assert (ds.PatientID, ds.IssuerOfPatientID) == (KIT_ID, KIT_ISSUER)
    assert others(ds) == [("TAG7", "VENDOR", "TEXT")]

    bare = dataset("TAG8")
    assert stamp(bare, KIT_ID, KIT_ISSUER) is True
    assert others(bare) == [("TAG8", None, "TEXT")]
    assert "IssuerOfPatientID" not in bare.OtherPatientIDsSequence[0]


def test_a_foreign_id_under_the_kits_issuer_is_kept_aside_too():
    ds = dataset("TAG7", KIT_ISSUER)
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    assert others(ds) == [("TAG7", KIT_ISSUER, "TEXT")]


def test_an_empty_id_leaves_no_other_id():
    ds = dataset("", "VENDOR")
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    assert (ds.PatientID, ds.IssuerOfPatientID) == (KIT_ID, KIT_ISSUER)
    assert "OtherPatientIDsSequence" not in ds


def test_existing_other_ids_are_kept_and_the_probe_id_is_not_added_twice():
    ds = dataset("TAG7", "VENDOR")
    first = Dataset()
    first.PatientID, first.IssuerOfPatientID = "OLD1", "HOSP"
    ds.OtherPatientIDsSequence = [first]
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    assert others(ds)[0][:2] == ("OLD1", "HOSP")
    assert others(ds)[1] == ("TAG7", "VENDOR", "TEXT")

    again = dataset("TAG7", "VENDOR")
    again.OtherPatientIDsSequence = [Dataset()]
    again.OtherPatientIDsSequence[0].PatientID = "TAG7"
    again.OtherPatientIDsSequence[0].IssuerOfPatientID = "VENDOR"
    stamp(again, KIT_ID, KIT_ISSUER)
    assert [(o.PatientID, o.IssuerOfPatientID) for o in again.OtherPatientIDsSequence] == [("TAG7", "VENDOR")]


def test_same_id_under_another_issuer_is_a_different_other_id():
    ds = dataset("TAG7", "VENDOR")
    seen = Dataset()
    seen.PatientID, seen.IssuerOfPatientID = "TAG7", "OTHER"
    ds.OtherPatientIDsSequence = [seen]
    stamp(ds, KIT_ID, KIT_ISSUER)
    assert [(o.PatientID, o.IssuerOfPatientID) for o in ds.OtherPatientIDsSequence] == \
        [("TAG7", "OTHER"), ("TAG7", "VENDOR")]


def test_the_identity_as_received_decides_what_is_kept():
    # a caller that already read the identity (before another step changed the dataset)
    ds = dataset("LATER", "X")
    before = source_identity(dataset("TAG7", "VENDOR"))
    stamp(ds, KIT_ID, KIT_ISSUER, before=before)
    assert others(ds) == [("TAG7", "VENDOR", "TEXT")]


def test_issuer_only_difference_is_a_change():
    ds = dataset(KIT_ID, "")
    assert stamp(ds, KIT_ID, KIT_ISSUER) is True
    ds2 = dataset("TAG7", KIT_ISSUER)
    assert stamp(ds2, KIT_ID, KIT_ISSUER) is True


def test_an_empty_or_missing_issuer_matches_a_kit_without_issuer():
    assert stamp(dataset(KIT_ID), KIT_ID, "") is False
    assert stamp(dataset(KIT_ID, ""), KIT_ID, "") is False


@pytest.mark.parametrize("spelled", ["None", "XXXX"])
def test_an_other_id_item_missing_a_field_never_stands_for_the_probe_id(spelled):
    # placeholder text a missing value could be mistaken for must not hide the probe's ID
    no_id = dataset(spelled, "VENDOR")
    item = Dataset()
    item.IssuerOfPatientID = "VENDOR"
    no_id.OtherPatientIDsSequence = [item]
    stamp(no_id, KIT_ID, KIT_ISSUER)
    assert (spelled, "VENDOR", "TEXT") in others(no_id)

    no_issuer = dataset(spelled, spelled)
    item = Dataset()
    item.PatientID = spelled
    no_issuer.OtherPatientIDsSequence = [item]
    stamp(no_issuer, KIT_ID, KIT_ISSUER)
    assert (spelled, spelled, "TEXT") in others(no_issuer)
