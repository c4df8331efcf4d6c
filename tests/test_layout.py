"""The package's imports point one way: a module only imports modules of lower layers (no circles)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "voicedb"

#: Lower layers first; a module may import only from layers below its own.
LAYERS = [
    {"errors", "files", "faults", "records"},
    {"config", "matchers", "streaming", "cohort"},
    {"flavours", "audio", "speech", "bundle", "store", "locks", "objects", "weights"},
    {"voice_encoder", "campplus", "batching", "encoding", "playback"},
    {"weight_sources"},
    {"index", "engine", "embeddings"},
    {"speakers"},
    {"context"},
    {"catalog"},
    {"matching", "conditionals"},
    {"calibration", "blends"},
    {"synthesis", "enroll", "bulk"},
    {"portability", "checker"},
    {"library"},
    {"server"},  # the package voicedb/server: HTTP over the library
    {"cli"},
    {"__init__", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def internal_imports(path: Path, level: int = 1) -> set[str]:
    """Names of voicedb modules that ``path`` imports anywhere (top level or inside functions);
    ``level`` is how many dots name the package itself (2 inside ``voicedb/server``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("voicedb."):
            found.add(node.module.split(".")[1])
    return found - {"migrations"}


def test_every_module_has_a_layer():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {"migrations"}
    assert {p.stem for p in PACKAGE.glob("*.py")} | packages == set(RANK)


def test_imports_only_point_down_the_layers():
    upward = [
        f"{path.stem} imports {name}"
        for path in sorted(PACKAGE.glob("*.py"))
        for name in sorted(internal_imports(path))
        if RANK[name] >= RANK[path.stem]
    ]
    assert upward == []


def test_the_server_builds_on_the_library_and_never_on_the_cli():
    upward = [
        f"server/{path.name} imports {name}"
        for path in sorted((PACKAGE / "server").glob("*.py"))
        for name in sorted(internal_imports(path, level=2))
        if RANK[name] >= RANK["server"]
    ]
    assert upward == []
