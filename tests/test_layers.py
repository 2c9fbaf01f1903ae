"""The layers of ARCHITECTURE.md, enforced: a module imports only its own layer or lower ones,
and ingest, inference and sync never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fieldkit"

LAYERS = {
    "config": 0, "errors": 0, "records": 0, "events": 0, "fsio": 0, "service": 0, "__init__": 0,
    "security": 1, "hardware": 1, "dicom": 1,
    "store": 2,
    "ingest": 3, "inference": 3, "sync": 3,
    "web": 4, "cli": 4, "kit": 4, "__main__": 4,
}
SIBLINGS_APART = {"ingest", "inference", "sync"}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    for alias in node.names:
                        yield f"{name}.{alias.name}"
                    continue
                yield name
            elif node.module:
                yield node.module


def test_layers_import_only_downwards():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        area = _area(module) if module != "fieldkit" else "__init__"
        layer = LAYERS.get(area)
        assert layer is not None, f"{module}: area {area!r} has no layer in ARCHITECTURE.md's table"
        for imported in _imports(path, module):
            if not imported.startswith("fieldkit"):
                continue
            target = _area(imported) if imported != "fieldkit" else "__init__"
            target_layer = LAYERS.get(target, 0)
            if target_layer > layer:
                problems.append(f"{module} (layer {layer}) imports {imported} (layer {target_layer})")
            if area in SIBLINGS_APART and target in SIBLINGS_APART and target != area:
                problems.append(f"{module} imports {imported}: ingest, inference and sync never import each other")
    assert problems == []
