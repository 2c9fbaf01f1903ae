"""Keep secrets and patient data out of logs, whoever logs them.

`install()` is called once by the kit's logging setup. It replaces the log-record factory,
so every record from every logger (the kit's, Flask's, cheroot's, pynetdicom's) is
redacted when it is created: its message is formatted and scrubbed, its arguments dropped,
its traceback formatted and scrubbed. Callers do nothing special; a forgotten `%r` of a
dataset or a header dict is still caught.

What is scrubbed:
- bearer tokens (`fkt_…`), `Authorization:` / `Cookie:` header values, session cookies;
- `key=value`, `key: value`, `"key": "value"` pairs whose key names a secret or a patient
  attribute (password, pin, passphrase, token, csrf, PatientName, PatientID, birth date…);
- DICOM person names (`FAMILY^GIVEN`) and DICOM element dumps of patient attributes;
- any value registered with `remember()` (ingest registers the names and IDs it sees), kept
  in memory only, bounded.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict

import ahocorasick

from .tokens import TOKEN_RE

MASK = "[redacted]"

_SECRET_KEYS = (
    r"pass(?:word|phrase|wd)?|pin|secret|token|access_token|api[_-]?key|csrf(?:_token)?|x-csrf-token|"
    r"session(?:_id)?|fk_session|__Host-fk_session|__Host-fk_pre|cookie|set-cookie|authorization|"
    r"patient_?name|patient_?id|patientname|patientid|patient_?birth_?date|patientbirthdate|"
    r"other_?patient_?(?:ids|names)|otherpatientids|otherpatientnames|patientaddress|"
    r"patientmothersbirthname|patienttelephonenumbers|issuer_?of_?patient_?id|"
    r"accession_?number|accessionnumber|name|q|query|birth_?date"
)

_PATTERNS = [
    # Authorization / Cookie headers: the whole rest of the value
    (re.compile(r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie)(\s*[:=]\s*)([^\r\n]+)"), r"\1\2" + MASK),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    (TOKEN_RE, MASK),
    # "key": "value"  /  'key': 'value'  (JSON, dict reprs)
    (re.compile(r"""(?i)(["'](?:""" + _SECRET_KEYS + r""")["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2"""), r"\1\2" + MASK + r"\2"),
    # "key": value-without-quotes (numbers, PersonName objects in reprs)
    (re.compile(r"""(?i)(["'](?:""" + _SECRET_KEYS + r""")["']\s*:\s*)(?!["'\[{])[^,}\]\s]+"""), r"\1" + MASK),
    # key=value in query strings, form bodies, keyword reprs (value up to a delimiter)
    (re.compile(r"""(?i)(?<![A-Za-z0-9_])((?:""" + _SECRET_KEYS + r""")=)(["']?)[^&\s,;)'"]*\2"""), r"\1\2" + MASK + r"\2"),
    # pydicom element dumps: (0010,0010) Patient's Name  PN: 'Doe^John'
    (re.compile(r"(?i)(\(0010,\s?[0-9a-f]{4}\)[^\n:]*:\s*)(.+)"), r"\1" + MASK),
    (re.compile(r"(?i)(Patient'?s?\s?(?:Name|ID|Birth Date|Address|Sex)\s*[:=]\s*)(.+)"), r"\1" + MASK),
    # DICOM person names FAMILY^GIVEN^MIDDLE: a word joined by a caret (a row of carets
    # under a traceback line is left alone)
    (re.compile(r"[^\s'\"=:,()\[\]{}<>]*\^[^\s'\",()\[\]{}<>]*"),
     lambda m: MASK if re.search(r"\w", m.group(0)) else m.group(0)),
]

# ----------------------------------------------------------------------------- remembered values

_remembered: "OrderedDict[str, None]" = OrderedDict()
_remember_lock = threading.Lock()
# The remembered values as one Aho-Corasick automaton over their lower-case forms: a log
# line costs its own length whatever the number of values (one alternation of 5 000 values
# took 4.5 ms a line, under the GIL, on every line the kit logs).
_automaton: "ahocorasick.Automaton | None" = None
_REMEMBER_MAX = 5000
_REMEMBER_MIN_LEN = 3  # shorter values would redact ordinary words and numbers


def _lowered(text: str) -> str:
    """`text` in lower case, one character for one (so a match's offsets are the text's)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)  # e.g. "İ" -> "i̇"


def remember(*values) -> None:
    """Register patient names, IDs and the like so that they are masked wherever they
    appear in a log line (in any letter case). In memory only; the oldest are forgotten
    past a bound."""
    global _automaton
    added = False
    with _remember_lock:
        for v in values:
            if v is None:
                continue
            s = str(v).strip()
            candidates = {s}
            if "^" in s:  # a PN: also its components and its human-readable form
                parts = [p for p in s.split("^") if p]
                candidates.update(parts)
                candidates.add(" ".join(parts))
            for c in candidates:
                c = _lowered(c)
                if len(c) >= _REMEMBER_MIN_LEN and c not in _remembered:
                    _remembered[c] = None
                    added = True
            while len(_remembered) > _REMEMBER_MAX:
                _remembered.popitem(last=False)
        if added:
            automaton = ahocorasick.Automaton()
            for value in _remembered:
                automaton.add_word(value, len(value))
            automaton.make_automaton()
            _automaton = automaton  # readers take the old one or the new one, whole


def forget_all() -> None:
    global _automaton
    with _remember_lock:
        _remembered.clear()
        _automaton = None


def _mask_remembered(text: str, automaton) -> str:
    """`text` with every remembered value masked, the longest where they overlap."""
    parts, last = [], 0
    for end, length in automaton.iter_long(_lowered(text)):
        parts += (text[last:end - length + 1], MASK)
        last = end + 1
    return "".join(parts) + text[last:] if parts else text


# Where a patient value shows up in a recognisable shape, the value itself is remembered,
# so a later bare mention ("failed for PID-4242") is masked too.
_LEARN = [
    re.compile(r"\(0010,\s?00(?:10|20|30|1000|1001)\)[^\n:]*:\s*'?([^'\n]+?)'?\s*$", re.M | re.I),
    re.compile(r"Patient'?s?\s?(?:Name|ID)\s*[:=]\s*'?([^'\n,]+?)'?\s*(?:$|,)", re.M | re.I),
    re.compile(r"""["']?(?:PatientName|PatientID|patient_name|patient_id|OtherPatientIDs)["']?\s*[:=]\s*["']?([^"',}\s][^"',}]*)""",
               re.I),
    re.compile(r"[^\s'\"=:,^()\[\]{}<>]+\^[^\s'\",()\[\]{}<>]*"),
]


def _learn(text: str) -> None:
    found = []
    for rx in _LEARN:
        for m in rx.finditer(text):
            value = (m.group(1) if rx.groups else m.group(0)).strip().strip("'\"")
            if value and value != MASK and len(value) <= 128:
                found.append(value)
    if found:
        remember(*found)


def redact(text: str) -> str:
    """Scrub one string."""
    if not text:
        return text
    _learn(text)
    automaton = _automaton
    if automaton is not None:
        text = _mask_remembered(text, automaton)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


# ----------------------------------------------------------------------------- logging hook

_installed = False
_install_lock = threading.Lock()


def _scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    if getattr(record, "_fk_redacted", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not make a log call raise
        message = f"{record.msg!r} {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        # Keep exc_info for handlers that check it, but formatters use exc_text first.
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._fk_redacted = True
    return record


class RedactingFilter(logging.Filter):
    """For handlers created outside `install()`'s reach (belt and braces)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record)
        return True


class RedactingFormatter(logging.Formatter):
    """Scrubs the fully formatted line, tracebacks included."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def install() -> None:
    """Install redaction for the whole process (idempotent): every record created from
    now on is scrubbed, and every handler already on the root logger gets a redacting
    formatter too (for lines built outside the record message, such as tracebacks
    formatted by a custom formatter)."""
    global _installed
    with _install_lock:
        if not _installed:
            previous = logging.getLogRecordFactory()

            def factory(*args, **kwargs):
                return _scrub_record(previous(*args, **kwargs))

            logging.setLogRecordFactory(factory)
            _installed = True
        for handler in logging.getLogger().handlers:
            if not isinstance(handler.formatter, RedactingFormatter):
                handler.setFormatter(RedactingFormatter(handler.formatter))


def cheroot_error_log(logger: logging.Logger | None = None):
    """A replacement for cheroot's `HTTPServer.error_log` (which writes to stderr directly,
    bypassing logging): `server.error_log = cheroot_error_log()`."""
    logger = logger or logging.getLogger("cheroot")

    import ssl
    import sys

    quiet = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError, TimeoutError)

    def error_log(msg="", level=20, traceback=False):
        exc = sys.exc_info()[1]
        if isinstance(exc, quiet):  # a client that went away mid-response: one line, no traceback
            logger.info("%s (%s)", msg, exc.__class__.__name__)
            return
        logger.log(level, "%s", msg, exc_info=bool(traceback))

    return error_log
