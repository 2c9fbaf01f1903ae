"""A DIMSE status as a dataset: the code, and the reason in words for the other side."""

from __future__ import annotations

from pydicom.dataset import Dataset


def status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # ErrorComment is LO: 64 characters, no backslash
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
