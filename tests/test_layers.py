"""The layers of ARCHITECTURE.md, enforced: a module imports only its own layer or lower ones,
ingest, inference and sync never import each other, and no two modules import each other
round a circle. The "module:function" strings of the kit's registry (SERVICES,
LOCKED_SERVICES, CONTROL_OPS) and of web's BLUEPRINTS count as imports of the module they
name, and each must name something that exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fieldkit"

LAYERS = {
    "config": 0, "errors": 0, "records": 0, "events": 0, "fsio": 0, "service": 0, "__init__": 0,
    "security": 1, "hardware": 1, "dicom": 1,
    "store": 2,
    "ingest": 3, "inference": 3, "sync": 3,
    "web": 4, "cli": 4, "kit": 4, "provision": 4, "__main__": 4,
}
SIBLINGS_APART = {"ingest", "inference", "sync"}
# "fieldkit.area.module:attribute", or the head of an f-string building one
SPEC = re.compile(r"^(fieldkit(?:\.\w+)+):(\w*)")


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree: ast.AST, module: str, is_package: bool):
    """The fieldkit modules an import statement names (anywhere in the file, also inside functions)."""
    package = module if is_package else module.rsplit(".", 1)[0]
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


def _named(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, attribute) of every registry string in the file: "fieldkit.x.y:attr" constants,
    f-strings starting with "fieldkit.x.y:" (attribute "" then), and importlib.import_module("...")."""
    found = []
    heads = {id(n.values[0]) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) and n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in heads:
            m = SPEC.match(node.value)
            if m and m.end() == len(node.value):
                found.append((m.group(1), m.group(2)))
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            m = SPEC.match(str(node.values[0].value))
            if m:
                found.append((m.group(1), ""))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("fieldkit")):
            found.append((str(node.args[0].value), ""))
    return found


def layer_problems(module: str, source: str, is_package: bool = False) -> list[str]:
    """What `module` (its source) does against the layer table, imports and registry strings alike."""
    area = _area(module) if module != "fieldkit" else "__init__"
    layer = LAYERS.get(area)
    if layer is None:
        return [f"{module}: area {area!r} has no layer in ARCHITECTURE.md's table"]
    tree = ast.parse(source, module)
    named = [(m, f"names {m}{':' + a if a else ''}") for m, a in _named(tree)]
    problems = []
    for imported, how in [(m, f"imports {m}") for m in _imports(tree, module, is_package)] + named:
        if not imported.startswith("fieldkit"):
            continue
        target = _area(imported) if imported != "fieldkit" else "__init__"
        target_layer = LAYERS.get(target, 0)
        if target_layer > layer:
            problems.append(f"{module} (layer {layer}) {how} (layer {target_layer})")
        if area in SIBLINGS_APART and target in SIBLINGS_APART and target != area:
            problems.append(f"{module} {how}: ingest, inference and sync never import each other")
    return problems


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the fieldkit modules it imports by statement. An import of a module's own
    package (`from . import x` inside that package) is not an edge: Python runs a package's
    __init__ before any of its modules, so it cannot close a circle."""
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        edges = set()
        for imported in _imports(ast.parse(source, module), module, is_package):
            while imported not in sources and "." in imported:  # `from pkg import name`: the package
                imported = imported.rsplit(".", 1)[0]
            if imported in sources and imported != module and not module.startswith(imported + "."):
                edges.add(imported)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def unresolved(specs: list[tuple[str, str]]) -> list[str]:
    """Registry strings naming a module or attribute that does not exist."""
    missing = []
    for module, attr in specs:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            missing.append(f"{module}: no such module")
            continue
        if attr and not hasattr(mod, attr):
            missing.append(f"{module}:{attr}: no such attribute")
    return missing


def _sources() -> dict[str, tuple[str, bool]]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        out[module] = (path.read_text(), path.name == "__init__.py")
    return out


# ----------------------------------------------------------------------------- each check catches a planted violation

def test_an_upward_import_or_a_sibling_import_is_caught():
    assert layer_problems("fieldkit.store.planted", "from ..web import auth\n") == [
        "fieldkit.store.planted (layer 2) imports fieldkit.web (layer 4)"]
    assert layer_problems("fieldkit.sync.planted", "def f():\n    from fieldkit.ingest import dimse\n") == [
        "fieldkit.sync.planted imports fieldkit.ingest: ingest, inference and sync never import each other"]
    assert layer_problems("fieldkit.web.planted", "from ..store import accounts\nfrom ..kit import lock\n") == []


def test_a_registry_string_counts_as_an_import():
    planted = ('SERVICES = [("x", "fieldkit.web.auth:start")]\n'
               'OPS = {op: f"fieldkit.kit.control:op_{op}" for op in ("a",)}\n'
               'def f(importlib):\n    return importlib.import_module("fieldkit.cli.core")\n')
    assert sorted(layer_problems("fieldkit.hardware.planted", planted)) == [
        "fieldkit.hardware.planted (layer 1) names fieldkit.cli.core (layer 4)",
        "fieldkit.hardware.planted (layer 1) names fieldkit.kit.control (layer 4)",
        "fieldkit.hardware.planted (layer 1) names fieldkit.web.auth:start (layer 4)"]
    assert unresolved([("fieldkit.kit.lock", "start_autolock"), ("fieldkit.kit.lock", "no_such_thing"),
                       ("fieldkit.no_such_module", "")]) == [
        "fieldkit.kit.lock:no_such_thing: no such attribute", "fieldkit.no_such_module: no such module"]


def test_an_import_circle_is_caught():
    planted = {
        "fieldkit.web": ("from . import auth\n", True),  # a package importing its module: no circle
        "fieldkit.web.auth": ("from . import _error\ndef f():\n    from .openapi import describe\n", False),
        "fieldkit.web.openapi": ("def g():\n    from .auth import permission_for\n", False),
        "fieldkit.kit": ("from .control import call\n", True),
        "fieldkit.kit.control": ("from fieldkit.kit.registry import CONTROL_OPS\n", False),
        "fieldkit.kit.registry": ("import importlib\n", False),
    }
    assert cycles(import_graph(planted)) == [["fieldkit.web.auth", "fieldkit.web.openapi"]]
    planted["fieldkit.web.openapi"] = ("import re\n", False)
    assert cycles(import_graph(planted)) == []


# ----------------------------------------------------------------------------- the package as it is

def test_layers_import_only_downwards():
    problems = []
    for module, (source, is_package) in _sources().items():
        problems += layer_problems(module, source, is_package)
    assert problems == []


def test_registry_strings_name_what_exists():
    specs = []
    for module, (source, _) in _sources().items():
        specs += _named(ast.parse(source, module))
    assert len(specs) > 30, specs  # SERVICES, LOCKED_SERVICES, CONTROL_OPS and BLUEPRINTS are all seen
    assert unresolved(specs) == []
    # the entries built by f-strings (CONTROL_OPS) as the kit builds them: every function exists
    from fieldkit.kit.registry import CONTROL_OPS, LOCKED_SERVICES, SERVICES
    built = [tuple(spec.split(":")) for spec in [*CONTROL_OPS.values(), *dict(SERVICES).values(),
                                                 *dict(LOCKED_SERVICES).values()]]
    assert unresolved(built) == []


def test_no_import_circles():
    assert cycles(import_graph(_sources())) == []
