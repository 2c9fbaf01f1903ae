"""The catalogue as the board reads it: a patient's rows read in place (not copied), a cold
board built from them patient by patient, and a conflicting re-send held and read back."""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import generate_uid

from fieldkit.kit import open_kit
from fieldkit.store import instances
from fieldkit.store.board import compute_row, rows_for
from fixtures.catalogue import grow, small_image


def test_a_conflict_is_held_and_read_back(data_dir):
    kit = open_kit(data_dir)
    store = kit.store
    study, series = generate_uid(), generate_uid()
    first = small_image("P2", study, series, seed=1)
    uid = instances.put_instance(store, first, "import")["sop_instance_uid"]
    ds = pydicom.dcmread(io.BytesIO(small_image("P2", study, series, seed=2)))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid  # ... other pixels
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert instances.put_instance(store, buf.getvalue(), "import")["status"] == "conflict"
    row = instances.get_instance(store, uid)
    assert row["conflict"] is True and len(row["conflicts"]) == 1
    assert [r["conflict"] for r in instances.rows_as_held(store, row["patient_id"])] == [True]
    kit.close()
    kit = open_kit(data_dir)
    assert instances.get_instance(kit.store, uid) == row
    kit.close()


def test_cold_board_is_built_patient_by_patient_from_the_rows_as_held(data_dir):
    kit = open_kit(data_dir)
    store = kit.store
    grow(store, 4, per_patient=3)
    board = rows_for(store).board()
    assert board["total"] == 4
    for card in board["patients"]:
        one, read = compute_row(store, card["id"])
        assert one == card and read == 1 + 3  # the patient and their three captures
    assert rows_for(store).stats.cleared == 1
    kit.close()
