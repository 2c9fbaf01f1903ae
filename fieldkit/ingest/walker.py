"""USB stick / folder import: walk folders and DICOMDIRs, store every DICOM file and
Part-10 zip bundle found, report each outcome. Idempotent: a file already stored is a
duplicate (nothing is stored twice), so importing the same stick again is harmless."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pydicom

from ..errors import BadInput, TooLarge
from .upload import DICOM, SKIPPED, ZIP, outcome, refusal, sniff, store_dicom_bytes, store_zip

MAX_DEPTH = 32


def _dicomdir_files(path: Path) -> list[Path]:
    """Files a DICOMDIR lists (ReferencedFileID is relative to the DICOMDIR's folder)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return []
    root = path.parent.resolve()
    out = []
    for rec in ds.get("DirectoryRecordSequence", []) or []:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [str(p) for p in (ref if isinstance(ref, pydicom.multival.MultiValue) else [ref])]
        candidate = (root.joinpath(*parts)).resolve()
        if candidate.is_relative_to(root) and candidate.is_file():  # no climbing out of the stick
            out.append(candidate)
        else:
            lower = _case_insensitive(root, parts)
            if lower:
                out.append(lower)
    return out


def _case_insensitive(root: Path, parts: list[str]) -> Path | None:
    """DICOMDIR IDs are upper case; FAT sticks mounted elsewhere may show lower case."""
    here = root
    for part in parts:
        if not here.is_dir():
            return None
        match = next((c for c in here.iterdir() if c.name.upper() == part.upper()), None)
        if match is None:
            return None
        here = match
    return here if here.is_file() else None


def find_files(paths: list[Path]) -> Iterator[Path]:
    """Every regular file under `paths` (symlinks not followed), DICOMDIR-listed files
    included, each once."""
    seen: set[Path] = set()

    def emit(p: Path):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            yield p

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BadInput(f"{raw} does not exist")
        if path.is_file():
            if path.name.upper() == "DICOMDIR":
                for f in _dicomdir_files(path):
                    yield from emit(f)
            else:
                yield from emit(path)
            continue
        base_depth = len(path.resolve().parts)
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames.sort()
            if len(Path(dirpath).resolve().parts) - base_depth >= MAX_DEPTH:
                dirnames.clear()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.is_symlink() or not p.is_file():
                    continue
                if name.upper() == "DICOMDIR":
                    for f in _dicomdir_files(p):
                        yield from emit(f)
                    continue
                yield from emit(p)


def import_file(store, path: Path) -> list[dict]:
    cap = int(store.config["dicom.max_object_mb"]) * (1 << 20)
    name = str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            kind = sniff(head)
            if kind == DICOM:
                if path.stat().st_size > cap:
                    return [refusal(name, TooLarge(f"file over the {cap >> 20} MiB limit (dicom.max_object_mb)"))]
                fh.seek(0)
                return [store_dicom_bytes(store, fh.read(), name, "import")]
            if kind == ZIP:
                fh.seek(0)
                with store.blobs.open_spool() as spool:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        spool.write(chunk)
                    return store_zip(store, spool, name, "import")
    except OSError as exc:
        return [refusal(name, BadInput(f"cannot read the file: {exc.strerror or exc}"))]
    return [outcome(name, SKIPPED, "not a DICOM file")]


def import_paths(store, paths: list[Path], progress: Callable[[dict], None] | None = None) -> dict:
    files = list(find_files(paths))
    counts: dict[str, int] = {}
    problems: list[dict] = []
    for i, path in enumerate(files, 1):
        for result in import_file(store, path):
            counts[result["status"]] = counts.get(result["status"], 0) + 1
            if result["status"] in ("refused", "conflict"):
                problems.append({"name": result["name"], "status": result["status"], "reason": result["reason"]})
        if progress:
            progress({"done": i, "total": len(files)})
    return {"files": len(files), "counts": counts, "problems": problems}
