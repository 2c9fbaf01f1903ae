"""The START triage rule (Simple Triage And Rapid Treatment): the category the tablet's
assistant proposes from yes/no answers. A pure function of the answers; the tablet runs
the same rule (static/js/start.js) and a test checks they agree on every combination."""

from __future__ import annotations

from ..errors import BadInput

START_QUESTIONS = ("walking", "breathing", "breathing_after_airway", "rr_over_30", "perfusion_poor", "obeys")


def start_category(answers: dict) -> str:
    """The START category proposed by the answers (the clinician confirms or overrides).

    walking -> green; not breathing even after the airway is opened -> black; breathing only
    after the airway is opened -> red; respiratory rate > 30 -> red; radial pulse absent or
    capillary refill > 2 s -> red; does not obey simple commands -> red; else yellow.
    Unanswered questions that the path needs give "none" (no proposal yet)."""
    def yes(k):
        return answers.get(k) is True

    def no(k):
        return answers.get(k) is False

    if yes("walking"):
        return "green"
    if not no("walking"):
        return "none"
    if no("breathing"):
        if no("breathing_after_airway"):
            return "black"
        if yes("breathing_after_airway"):
            return "red"
        return "none"
    if not yes("breathing"):
        return "none"
    if yes("rr_over_30"):
        return "red"
    if not no("rr_over_30"):
        return "none"
    if yes("perfusion_poor"):
        return "red"
    if not no("perfusion_poor"):
        return "none"
    if no("obeys"):
        return "red"
    if yes("obeys"):
        return "yellow"
    return "none"


def parse_answers(raw) -> dict:
    """The answers of a request, checked: known questions, yes/no/unanswered values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInput("answers must be an object of yes/no values")
    out = {}
    for k, v in raw.items():
        if k not in START_QUESTIONS:
            raise BadInput(f"unknown START question {str(k)[:40]!r}")
        if v is not None and not isinstance(v, bool):
            raise BadInput(f"answer to {k} must be true, false or null")
        out[k] = v
    return out
