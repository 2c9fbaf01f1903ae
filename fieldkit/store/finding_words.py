"""A patient's positive AI findings in the words the board shows ("B-lines 4, R2",
"free fluid: RUQ"), and whether one of them argues for a more urgent category than the one
the patient has (layer 2: pure functions of the patient's catalogue and finding rows).

Only assessable findings count, and not one a clinician rejected. The rules are the
field's rough ones, a prompt to look again and never a category set for anyone:
free fluid on FAST argues for Immediate (possible internal bleeding); so does lung sliding
absent, or seen in part of the view only, in a clip without a B-line pattern (a possible
pneumothorax: the other half of a positive eFAST; B-lines arise from the visceral pleura,
so where they are seen the lung touches the chest wall and sliding absent there is no
pneumothorax sign); a B-line pattern argues for at least Delayed.
"""

from __future__ import annotations

import re

# The most urgent first, as the board orders them
URGENCY = ("red", "yellow", "green")
FAST_WINDOWS = re.compile(r"\b(RUQ|LUQ|pelvi[cs]|suprapubic|pericardi(al|um)|subxiphoid)\b", re.IGNORECASE)


def _counted(f: dict) -> bool:
    return bool(f.get("assessable")) and (f.get("review") or {}).get("decision") != "rejected"


def _window(inst: dict) -> str:
    text = " ".join(str(inst.get(k) or "") for k in ("series_description", "study_description"))
    m = FAST_WINDOWS.search(text)
    if not m:
        return ""
    word = m.group(1)
    return word.upper() if word.upper() in ("RUQ", "LUQ") else word.lower()


def positives(insts: list[dict], fnds: list[dict]) -> list[dict]:
    """[{"text", "argues", "code"}] for each positive finding, in capture order; `argues` is
    the category it argues for; `code` is the same words as data ({"kind", "n", "where"}), so
    that a tablet can say them in its own language."""
    by_uid = {r["sop_instance_uid"]: r for r in insts}
    out = []
    for f in sorted(fnds, key=lambda f: (by_uid.get(f.get("sop_instance_uid")) or {}).get("received_at") or 0):
        if not _counted(f):
            continue
        r, inst = f.get("result") or {}, by_uid.get(f.get("sop_instance_uid")) or {}
        if f.get("task") == "lung" and r.get("pattern") == "B-line pattern":
            zone = inst.get("lung_zone") or ""
            # the clip's robust count (its summary frame's), as the patient page shows it; rows
            # made before the summary existed have only the maximum over frames
            n = r.get("b_lines") if r.get("summary_frame") else r.get("max_b_lines")
            lines = "B-lines confluent" if r.get("confluent") else f"B-lines {n}"
            code = {"kind": "b_lines_confluent" if r.get("confluent") else "b_lines", "n": n, "where": zone}
            out.append({"text": lines + (f", {zone}" if zone else ""), "argues": "yellow", "code": code})
        sliding = r.get("sliding") or {}
        if f.get("task") == "lung" and r.get("pattern") != "B-line pattern" \
                and (sliding.get("status") == "absent" or sliding.get("reason_code") == "partial"):
            zone = inst.get("lung_zone") or ""
            kind = "no_lung_sliding" if sliding.get("status") == "absent" else "partial_lung_sliding"
            words = "no lung sliding" if kind == "no_lung_sliding" else "lung sliding in part only"
            out.append({"text": words + (f", {zone}" if zone else ""), "argues": "red",
                        "code": {"kind": kind, "n": None, "where": zone}})
        if f.get("task") == "fast" and r.get("fluid_present"):
            window = _window(inst)
            out.append({"text": "free fluid" + (f": {window}" if window else ""), "argues": "red",
                        "code": {"kind": "free_fluid", "n": None, "where": window}})
    return out


def card_fields(triage: str, insts: list[dict], fnds: list[dict]) -> dict:
    """What a board card shows: the findings in words, and the most urgent category one of
    them argues for when it is more urgent than the patient's (else None)."""
    found = positives(insts, fnds)
    argues = None
    if triage in URGENCY:
        for item in found:
            if URGENCY.index(item["argues"]) < URGENCY.index(argues or triage):
                argues = item["argues"]
    why = [item for item in found if item["argues"] == argues] if argues else []
    return {"finding_words": [item["text"] for item in found],
            "finding_codes": [item["code"] for item in found],
            "finding_argues": {"category": argues, "why": why[0]["text"], "why_code": why[0]["code"]} if argues else None}
