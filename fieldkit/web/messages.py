"""The kit's own sentences in the page's language: the API's refusals that the pages show,
the disk banner, a model's reason for giving no assessment (and why the models are not
running), and the words the handover list, handover sheet and incident summary compute.

These sentences are made in English by the layers below the web (the store, inference),
with values in them ("no patient T-12"), and they stay English there (logs, the command
line, the hospital's PDF, machine clients). Each one is listed here once, as a template with
named placeholders; `translate()` finds the template an English sentence was made from,
translates that template with Flask-Babel in the request's language and puts the values
back as they were (tags, IDs, numbers are never translated). A sentence no template
matches stays in English: untranslated is honest, a wrong guess is not.
"""

from __future__ import annotations

import functools
import re

from flask import has_request_context
from flask_babel import get_locale, gettext

from .i18n import DEFAULT, N_

# Sentences of the layers below, word for word (tests/test_i18n_messages.py makes the real
# ones and checks that each is found here).
TEMPLATES = (
    # the access guard and the app's error pages (web/guard.py, web/__init__.py)
    N_("your role (%(role)s) may not do this"),
    N_("this needs the '%(permission)s' permission"),
    N_("missing or invalid CSRF token (reload the page)"),
    N_("sign in first (or send a bearer token)"),
    N_("the kit is locked: unlock it with the kit passphrase"),
    N_("not found"),
    N_("%(method)s is not allowed here"),
    N_("internal error (details are in the kit's log)"),
    N_("request body larger than %(size)s MiB"),
    N_("request body larger than %(size)s bytes"),
    N_("send a JSON object (Content-Type: application/json)"),
    # the tablet's forms: patient, triage, details, care (web/ui_api.py, web/care.py, store/)
    N_("%(field)s must be text"),
    N_("%(field)s is longer than %(limit)s characters"),
    N_("%(field)s contains control characters"),
    N_("%(field)s must be a whole number from %(low)s to %(high)s"),
    N_("triage must be one of %(choices)s"),
    N_("triage must be one of %(choices)s, got %(value)s"),
    N_("no patient %(patient)s"),
    N_("no patient %(patient)s on the board"),
    N_("triage tag %(tag)s is not a usable patient ID (printable, at most 64 characters)"),
    N_("a patient with tag %(tag)s already exists"),
    N_("%(patient)s was re-triaged meanwhile (now %(category)s); look again first"),
    N_("undo must be true or false"),
    N_("age must be a whole number of years"),
    N_("age must be between 0 and 130"),
    N_("sex must be M, F, O or empty"),
    N_("say which patient to merge into"),
    N_("%(first)s and %(second)s are already the same patient"),
    N_("patient %(patient)s is not merged into another"),
    N_("the merge of %(patient)s can no longer be undone (its undo time is over and the hospital may have been "
       "told); fix the identity with an edit instead"),
    N_("%(patient)s was merged again since; undo that merge first"),
    N_("patient %(patient)s has no name to confirm"),
    N_("no such capture on this kit"),
    N_("no capture %(uid)s"),
    N_("this capture has no thumbnail"),
    N_("this finding has no overlay"),
    N_("an M-mode strip is made for lung findings only"),
    N_("this finding has no lung sliding result"),
    N_("a single frame has no M-mode: it needs a cine"),
    N_("no pleural line was found to take an M-mode through"),
    N_("too few lung frames in the clip for an M-mode strip"),
    N_("patient %(patient)s is recorded as deceased: captures are not assigned to them"),
    N_("the capture was moved meanwhile (it is now on %(patient)s); look again before moving it"),
    N_("the capture is already on %(patient)s"),
    N_("zone must be one of %(zones)s or empty"),
    N_("decision must be accepted, rejected, acknowledged or pending"),
    N_("a finding is accepted or rejected; a 'no assessment' is acknowledged (there is nothing to accept)"),
    N_("the model gave no assessment here: there is nothing to accept or reject, acknowledge it"),
    N_("intervention must be one of %(choices)s"),
    N_("say what was done (free text) for another intervention"),
    N_("the intervention's time must be a timestamp in seconds"),
    N_("the intervention's time must be within the last 24 hours and not in the future"),
    N_("zone must be one of: %(zones)s"),
    N_("disposition must be one of %(choices)s"),
    N_("say where the patient went (destination) when they leave"),
    # changes a tablet made offline (web/offline.py, store/offline.py)
    N_("at most %(n)s changes per request; send the rest in another"),
    N_("a %(kind)s needs the '%(permission)s' permission"),
    N_("the change is dated in the future: check the tablet's clock"),
    N_("the change is more than a week old"),
    N_("a note needs text"),
    N_("a note is at most %(n)s characters"),
    N_("the note contains control characters"),
    N_("no patient %(patient)s on the kit (removed, or its registration was refused)"),
    N_("%(patient)s was merged into %(survivor)s: the change went to %(survivor)s"),
    # the disk banner (store/space.py)
    N_("disk nearly full (%(free)s MiB free): new captures are refused; sync to the hospital, export or back up, "
       "then purge studies the hospital confirmed; captures resume by themselves once space is free"),
    N_("disk space is low (%(free)s MiB free; captures stop below %(refuse)s MiB): sync to the hospital, export "
       "or back up, then purge studies the hospital confirmed"),
    # a model's reason for no assessment, behind "Why no assessment" (inference/runner.py)
    N_("not a lung view of usable quality (view/quality gate per frame: %(counts)s; threshold p>=%(p)s)"),
    N_("not a FAST (abdominal) view of usable quality (view/quality gate per frame: %(counts)s; threshold "
       "p>=%(p)s)"),
    N_("the lung view seems turned on the screen (the view gate reads it better turned a quarter or half turn); "
       "the models read upright views only"),
    N_("the FAST (abdominal) view seems turned on the screen (the view gate reads it better turned a quarter or "
       "half turn); the models read upright views only"),
    N_("no verified view/quality gate model is loaded"),
    N_("pixel data does not decode: %(detail)s"),
    N_("frames of %(width)sx%(height)s pixels are too small (< %(min)s)"),
    N_("colour-flow Doppler on the image (%(share)s of pixels coloured); the models read greyscale B-mode only"),
    N_("every row is about the same across the image (an M-mode strip or horizontal stripes, not a B-mode image) "
       "on %(n)s of %(total)s frames"),
    N_("every column is about the same down the image (vertical stripes, not a B-mode image) on %(n)s of "
       "%(total)s frames"),
    N_("NumberOfFrames is not a number: %(value)s"),
    # why the models or the scrub are not running, on the Device page (inference/worker.py, store/scrub.py)
    N_("inference.enabled is false"), N_("not started"), N_("store.scrub_days is 0"),
    # the handover list, handover sheet and incident summary (web/handover.py, store/care.py)
    N_("Triage point"), N_("Red area"), N_("Yellow area"), N_("Green area"), N_("Casualty collection point"),
    N_("Ambulance loading"),
    N_("in treatment"), N_("awaiting transport"), N_("left"), N_("discharged"), N_("deceased"),
    N_("left by %(vehicle)s to %(destination)s"), N_("left to %(destination)s"),
    N_("Tourniquet"), N_("Airway"), N_("Fluids"), N_("Analgesia"),
    N_("Tourniquet: %(text)s"), N_("Airway: %(text)s"), N_("Fluids: %(text)s"), N_("Analgesia: %(text)s"),
    N_("OVERDUE since %(when)s"),
    N_("lung: not assessable"), N_("fast: not assessable"),
    N_("lung: B-line pattern, up to %(n)s B-lines"), N_("lung: B-line pattern, up to %(n)s B-lines, confluent"),
    N_("lung: A-line pattern, up to %(n)s B-lines"), N_("lung: A-line pattern, up to %(n)s B-lines, confluent"),
    N_("FAST: free fluid"), N_("FAST: no free fluid"),
    N_("lung sliding: present"), N_("lung sliding: absent (pneumothorax not excluded)"),
    N_("lung sliding: in part of the view only (pneumothorax not excluded)"),
    N_("Immediate"), N_("Delayed"), N_("Minor"), N_("Deceased"), N_("Expectant"), N_("Not triaged"),
    N_("%(age)s y"), N_("(undo)"), N_("by %(person)s"),
)

# The form fields a refusal names (`%(field)s` above), in words; any other value stays as sent.
FIELD_WORDS = {
    "tag": N_("tag"),
    "name": N_("name"),
    "note": N_("note"),
    "into": N_("the patient to merge into"),
    "q": N_("the search"),
    "the intervention's text": N_("the intervention's text"),
    "the destination": N_("the destination"),
    "the vehicle": N_("the vehicle"),
}

# The view/quality gate's labels inside a reason's per-frame counts (`%(counts)s`: "uncertain
# 28/30, other 2/30"), in words; a label not listed stays as the model names it.
GATE_WORDS = {
    "lung": N_("lung"),
    "fast": N_("FAST"),
    "other": N_("other view"),
    "no_contact": N_("no probe contact"),
    "too_dark": N_("too dark"),
    "saturated": N_("saturated"),
    "uncertain": N_("uncertain"),
    "turned": N_("turned on the screen"),
}
_COUNT = re.compile(r"(\w+) (\d+/\d+)")

_FIELD = re.compile(r"%\((\w+)\)s")


@functools.cache
def _patterns() -> list[tuple[re.Pattern, str]]:
    """(regular expression of the English sentence, template) for each template with values,
    the most specific (most literal text) first."""
    out = []
    for template in TEMPLATES:
        parts = _FIELD.split(template)  # text, name, text, name, ..., text
        if len(parts) == 1:
            continue
        seen, regex = set(), []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                regex.append(re.escape(part))
            else:
                regex.append(f"(?P={part})" if part in seen else f"(?P<{part}>.+?)")
                seen.add(part)
        out.append((re.compile("".join(regex), re.S), template))
    out.sort(key=lambda pt: -len(_FIELD.sub("", pt[1])))
    return out


@functools.cache
def _plain() -> frozenset:
    return frozenset(t for t in TEMPLATES if "%(" not in t)


def template_of(text: str) -> tuple[str, dict] | None:
    """(template, values) the English `text` was made from, or None."""
    if text in _plain():
        return text, {}
    for regex, template in _patterns():
        m = regex.fullmatch(text)
        if m:
            return template, m.groupdict()
    return None


def translate(text):
    """`text`, a sentence the kit made in English, in this request's language."""
    if not isinstance(text, str) or not text or not has_request_context() or str(get_locale() or DEFAULT) == DEFAULT:
        return text
    found = template_of(text)
    if found is None:
        return text
    template, values = found
    if values.get("field") in FIELD_WORDS:
        values = values | {"field": gettext(FIELD_WORDS[values["field"]])}
    if "counts" in values:
        values = values | {"counts": _COUNT.sub(
            lambda m: f"{gettext(GATE_WORDS[m[1]]) if m[1] in GATE_WORDS else m[1]} {m[2]}", values["counts"])}
    return gettext(template, **values) if values else gettext(template)
