"""Positive findings on the board in words, and the flag for a finding that argues for a
more urgent category: "B-lines 4, R2" (the capture's lung zone), "free fluid: RUQ" (the
FAST window named by the capture); a finding not assessable, negative or rejected by a
clinician says nothing; free fluid on a Delayed patient argues for Immediate, a B-line
pattern on a Minor one for Delayed, nothing argues for a patient already as urgent; the same
words also go as codes, for a tablet to say them in its language."""

from __future__ import annotations

import time

from fieldkit.inference import findings as inference_findings
from fieldkit.store import instances as catalogue
from fieldkit.store import patients as pstore
from fieldkit.store.board import rows_for
from fieldkit.store.finding_words import card_fields
from fixtures.board import grow


def _f(uid, task, result, assessable=True, review=None):
    return {"sop_instance_uid": uid, "task": task, "result": result, "assessable": assessable, "review": review}


LUNG = {"pattern": "B-line pattern", "max_b_lines": 4}
FLUID = {"fluid_present": True}


def test_words_and_what_they_argue_for():
    insts = [{"sop_instance_uid": "1", "received_at": 1, "lung_zone": "R2"},
             {"sop_instance_uid": "2", "received_at": 2, "series_description": "eFAST RUQ view"}]
    both = [_f("2", "fast", FLUID), _f("1", "lung", LUNG)]
    lines, fluid = {"kind": "b_lines", "n": 4, "where": "R2"}, {"kind": "free_fluid", "n": None, "where": "RUQ"}
    assert card_fields("yellow", insts, both) == {
        "finding_words": ["B-lines 4, R2", "free fluid: RUQ"], "finding_codes": [lines, fluid],
        "finding_argues": {"category": "red", "why": "free fluid: RUQ", "why_code": fluid}}
    assert card_fields("green", insts, [_f("1", "lung", LUNG)])["finding_argues"] == {
        "category": "yellow", "why": "B-lines 4, R2", "why_code": lines}
    assert card_fields("red", insts, both)["finding_argues"] is None
    assert card_fields("none", insts, both)["finding_argues"] is None  # not triaged: nothing to raise
    quiet = [_f("1", "lung", {"pattern": "A-line pattern", "max_b_lines": 1}), _f("2", "fast", {"fluid_present": False}),
             _f("2", "fast", FLUID, assessable=False), _f("1", "lung", LUNG, review={"decision": "rejected"})]
    assert card_fields("green", insts, quiet) == {"finding_words": [], "finding_codes": [], "finding_argues": None}


def test_a_clip_is_said_by_its_summary_count_not_its_noisiest_frame():
    insts = [{"sop_instance_uid": "1", "received_at": 1}]
    clip = _f("1", "lung", {"pattern": "B-line pattern", "b_lines": 4, "summary_frame": 12, "max_b_lines": 7})
    assert card_fields("none", insts, [clip])["finding_words"] == ["B-lines 4"]  # as the patient page says it
    old_row = _f("1", "lung", {"pattern": "B-line pattern", "max_b_lines": 7})  # made before clip summaries
    assert card_fields("none", insts, [old_row])["finding_words"] == ["B-lines 7"]


def test_confluent_lines_are_said_in_words():
    insts = [{"sop_instance_uid": "1", "received_at": 1, "lung_zone": "L1"}]
    white = _f("1", "lung", {"pattern": "B-line pattern", "max_b_lines": 2, "confluent": True})
    code = {"kind": "b_lines_confluent", "n": 2, "where": "L1"}
    assert card_fields("green", insts, [white]) == {
        "finding_words": ["B-lines confluent, L1"], "finding_codes": [code],
        "finding_argues": {"category": "yellow", "why": "B-lines confluent, L1", "why_code": code}}


def test_the_board_card_shows_them(store):
    grow(store, ["FW-1"], 1)
    pstore.set_triage(store, "FW-1", "yellow", by="t")
    uid = catalogue.instance_rows(store, patient_id="FW-1")[0]["sop_instance_uid"]
    row = {"id": f"f-{uid[-12:]}", "sop_instance_uid": uid, "patient_id": "FW-1", "model": "m", "model_sha256": "0" * 64,
           "model_version": "1", "task": "fast", "assessable": True, "reason": "", "result": FLUID, "overlay": None,
           "created": time.time()}
    inference_findings.replace(store, uid, [row])
    store.events.publish("finding.stored", sop_instance_uid=uid, patient_id="FW-1", task="fast")
    card = rows_for(store).row("FW-1")
    assert card["finding_words"] == ["free fluid"]
    assert card["finding_argues"] == {"category": "red", "why": "free fluid",
                                      "why_code": {"kind": "free_fluid", "n": None, "where": ""}}


def test_absent_or_partial_lung_sliding_argues_for_immediate():
    """No lung sliding (or sliding in part of the view only, a possible lung point) with A-lines
    is a possible pneumothorax: the other positive eFAST sign, flagged like free fluid."""
    insts = [{"sop_instance_uid": "1", "received_at": 1, "lung_zone": "L2"}, {"sop_instance_uid": "2", "received_at": 2}]
    still = _f("1", "lung", {"pattern": "A-line pattern", "max_b_lines": 0, "sliding": {"status": "absent"}})
    code = {"kind": "no_lung_sliding", "n": None, "where": "L2"}
    assert card_fields("yellow", insts, [still]) == {
        "finding_words": ["no lung sliding, L2"], "finding_codes": [code],
        "finding_argues": {"category": "red", "why": "no lung sliding, L2", "why_code": code}}
    point = _f("2", "lung", {"pattern": "A-line pattern", "max_b_lines": 0,
                             "sliding": {"status": "not assessable", "reason_code": "partial"}})
    assert card_fields("green", insts, [point])["finding_words"] == ["lung sliding in part only"]
    quiet = [_f("1", "lung", {"pattern": "A-line pattern", "max_b_lines": 0, "sliding": {"status": s, "reason_code": c}})
             for s, c in (("present", ""), ("not assessable", "single_frame"), ("not assessable", "probe_moved"))]
    quiet.append(_f("1", "lung", {"pattern": "A-line pattern", "sliding": {"status": "absent"}}, review={"decision": "rejected"}))
    assert card_fields("green", insts, quiet) == {"finding_words": [], "finding_codes": [], "finding_argues": None}
    # B-lines arise from the visceral pleura: with a B-line pattern, absent sliding is no
    # pneumothorax sign, and the card says the B-lines (which argue for Delayed) only
    wet = _f("1", "lung", {"pattern": "B-line pattern", "b_lines": 4, "summary_frame": 2, "sliding": {"status": "absent"}})
    assert card_fields("green", insts, [wet])["finding_words"] == ["B-lines 4, L2"]

