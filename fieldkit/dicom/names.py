"""Person names for people to read, from DICOM PN values (PS3.5 6.2): "Family, Given".

A PN is up to three component groups split by "=" (alphabetic, ideographic, phonetic), each
up to five components split by "^" (family, given, middle, prefix, suffix); a multi-valued
PN splits values by "\\". Probes fill them oddly (`OB^^^^`, `CompressedSamples^US1`), so
empty components are dropped and a "^" or "=" is never shown. Pure: no store, no pydicom.
"""

from __future__ import annotations

MAX_SHOWN = 200


def _group(text: str) -> str:
    """One component group: "Family, Prefix Given Middle, Suffix" with empty parts dropped."""
    parts = [" ".join(p.split()) for p in text.split("^")]
    family, given, middle, prefix, suffix = (parts + [""] * 5)[:5]
    extra = [p for p in parts[5:] if p]  # more than five components: kept, not lost
    rest = " ".join(p for p in (prefix, given, middle, *extra) if p)
    name = ", ".join(p for p in (family, rest) if p)
    return f"{name}, {suffix}" if name and suffix else (name or suffix)


def _value(text: str) -> str:
    """One PN value: its first non-empty group, the others in brackets when they differ."""
    groups = list(dict.fromkeys(g for g in (_group(t) for t in text.split("=")) if g))
    if not groups:
        return ""
    return groups[0] + (f" ({' / '.join(groups[1:])})" if len(groups) > 1 else "")


def format_person_name(pn: str | None) -> str:
    """A PN (or a name someone typed) as people write it; "" when it names nobody."""
    text = "".join(c for c in str(pn or "") if c.isprintable())
    return "; ".join(v for v in (_value(t) for t in text.split("\\")) if v)[:MAX_SHOWN]
