"""The kit's own sentences in the page's language (fieldkit/web/messages.py), without a
browser: the sentences the store, the disk check and the models really make are found and
translated with their values kept, English stays English, and anything else passes
through unchanged."""

from __future__ import annotations

import random
import string
from types import SimpleNamespace

import pytest
from flask import Flask
from flask_babel import Babel

import fieldkit.web
from fieldkit.errors import BadInput
from fieldkit.inference.runner import _why_not
from fieldkit.store import care
from fieldkit.store import patients as pstore
from fieldkit.store.space import DiskSpace
from fieldkit.web import handover
from fieldkit.web.messages import TEMPLATES, template_of, translate


@pytest.fixture(scope="module")
def app():
    """A Flask app reading the kit's catalogues, in the language the request asks for."""
    from pathlib import Path
    app = Flask("lang-test", root_path=str(Path(fieldkit.web.__file__).parent))
    Babel(app, locale_selector=lambda: __import__("flask").request.args.get("lang", "en"))
    return app


def _in(app, lang: str, text: str) -> str:
    with app.test_request_context(f"/?lang={lang}"):
        return translate(text)


def _refusal(fn, *args, **kw) -> str:
    with pytest.raises(BadInput) as e:
        fn(*args, **kw)
    return e.value.message


def _disk(free_mb: float, warn: int, refuse: int) -> str:
    st = SimpleNamespace(f_bavail=int(free_mb * 1024), f_frsize=1024, f_blocks=10 ** 9)
    space = DiskSpace("/", {"store.warn_free_mb": warn, "store.refuse_free_mb": refuse}, statvfs=lambda p: st)
    return space.state()["message"]


def _real_sentences() -> dict[str, str]:
    """Sentences as the layers below the web make them (name -> English)."""
    return {
        "triage": _refusal(pstore.set_triage, None, "T-1", "purple"),
        "intervention": _refusal(care.add_intervention, None, "T-1", "surgery", ""),
        "other": _refusal(care.add_intervention, None, "T-1", "other", ""),
        "zone": _refusal(care.set_zone, None, "T-1", "Roof", ["Red area", "Green area"]),
        "disposition": _refusal(care.set_disposition, None, "T-1", "flying"),
        "destination": _refusal(care.set_disposition, None, "T-1", "left"),
        "low": _disk(900.5, 10240, 100),
        "full": _disk(50, 10240, 100),
        "gate": _why_not("lung", {"uncertain": 28, "other": 2}, 30, 0.6),
        "gate-fast": _why_not("fast", {"lung": 30}, 30, 0.6),
        "left": care.disposition_text({"state": "left", "vehicle": "Amb 3", "destination": "St X (north)"}),
        "fluid": handover.finding_text({"task": "fast", "assessable": True, "result": {"fluid_present": True}}),
        "lung": handover.finding_text({"task": "lung", "assessable": True,
                                       "result": {"pattern": "B-line pattern", "max_b_lines": 4, "confluent": True}}),
        "sliding": handover.finding_texts({"task": "lung", "assessable": True,
                                           "result": {"pattern": "A-line pattern", "max_b_lines": 0,
                                                      "sliding": {"status": "absent"}}})[1],
    }


def test_every_sentence_the_kit_makes_is_found_with_its_values():
    for name, text in _real_sentences().items():
        found = template_of(text)
        assert found is not None, f"{name}: no template for {text!r} (add it to web/messages.py TEMPLATES)"
        template, values = found
        assert template % values == text, name  # the values put back give the sentence again


@pytest.mark.parametrize("lang, word", [("fr", "disque presque plein"), ("es", "disco casi lleno"),
                                        ("ar", "القرص ممتلئ تقريبًا")])
def test_sentences_are_translated_and_values_kept(app, lang, word):
    s = _real_sentences()
    full = _in(app, lang, s["full"])
    assert full.startswith(word) and "(50 " in full
    low = _in(app, lang, s["low"])
    assert low != s["low"] and "900" in low and "100" in low
    gate = _in(app, lang, s["gate"])
    assert gate != s["gate"] and "28/30" in gate and "2/30" in gate and "p>=0.6" in gate
    assert "uncertain" not in gate and "other 2" not in gate  # the gate's labels in words too
    left = _in(app, lang, s["left"])
    assert left != s["left"] and "Amb 3" in left and "St X (north)" in left  # typed words stay as typed
    for name in ("triage", "intervention", "other", "zone", "disposition", "destination", "gate-fast", "fluid", "lung",
                 "sliding"):
        assert _in(app, lang, s[name]) != s[name], name
    tag = "T-(1)+.*"  # a value with characters a pattern would read as syntax
    assert _in(app, lang, f"a patient with tag {tag} already exists").count(tag) == 1


def test_english_and_unknown_sentences_are_unchanged(app):
    s = _real_sentences()
    for text in s.values():
        assert _in(app, "en", text) == text
    assert _in(app, "fr", "something the kit never says") == "something the kit never says"
    assert _in(app, "fr", "") == ""
    assert translate("no patient T-1") == "no patient T-1"  # outside a request: English
    assert _in(app, "fr", "no patient T-1") == "aucun patient T-1"


def test_a_repeated_value_must_repeat(app):
    said = "T-1 was merged into T-2: the change went to T-2"
    assert "T-2" in _in(app, "fr", said) and _in(app, "fr", said) != said
    odd = "T-1 was merged into T-2: the change went to T-3"  # not a sentence the kit makes
    assert _in(app, "fr", odd) == odd


def test_every_template_is_a_distinct_sentence():
    assert len(set(TEMPLATES)) == len(TEMPLATES)
    for t in TEMPLATES:
        assert t == t.strip() and "{" not in t, t


def test_fuzzed_text_never_breaks_translation(app):
    rng = random.Random(16)
    alphabet = string.printable + "é٣%()s{}"
    bits = ["no patient ", "%(x)s", " was merged into ", ": the change went to ", "disk space is low (", "MiB", "%"]
    with app.test_request_context("/?lang=ar"):
        for _ in range(2000):
            text = "".join(rng.choice(bits) if rng.random() < 0.3 else rng.choice(alphabet)
                           for _ in range(rng.randint(0, 60)))
            out = translate(text)
            assert isinstance(out, str)
        assert translate(None) is None and translate(3) == 3



def test_a_refusal_names_the_field_in_words_and_keeps_what_it_does_not_know(app):
    long_vehicle = _refusal(care.set_disposition, None, "T-1", "left", destination="St X", vehicle="V" * 500)
    assert long_vehicle.startswith("the vehicle is longer than")
    assert _in(app, "fr", long_vehicle).startswith("le véhicule dépasse ")
    for lang in ("fr", "es", "ar"):
        shown = _in(app, lang, "note is longer than 2000 characters")
        assert not shown.startswith("note ") and "longer" not in shown and "2000" in shown, (lang, shown)
        assert "tag" not in _in(app, lang, "tag must be text"), lang
    # a field the kit does not list is shown as sent, inside the translated sentence
    shown = _in(app, "fr", "colour must be text")
    assert "colour" in shown and "must be text" not in shown


def test_a_models_reason_says_the_gate_labels_in_words(app):
    reason = _why_not("lung", {"uncertain": 28, "too_dark": 1, "weird_label": 1}, 30, 0.6)
    fr = _in(app, "fr", reason)
    assert "incertaine 28/30" in fr and "trop sombre 1/30" in fr, fr
    assert "weird_label 1/30" in fr  # a label the kit does not know stays as the model names it
    assert _in(app, "en", reason) == reason
