"""The folders show the architecture: which package may import which (docs/architecture.md#layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("sources.files", "sources.sqlite", "sources.http")
BESIDE_THE_CORE = ("broker.cli", "broker.redis_server", "broker.handler_api")
FIRST_NAME = "broker.idempotency"  # the handlers' helper under its first name: a re-export, nothing else


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as a and a.b), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def ours(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


MODULES = {module_name(p): imports(p) for folder in ("broker", "workers", "sources", "handlers")
           for p in sorted((ROOT / folder).rglob("*.py"))}


def offenders(importer: str, *forbidden: str) -> dict[str, list[str]]:
    out = {}
    for name, imported in MODULES.items():
        if ours(name, importer):
            bad = sorted(i for i in imported if ours(i, *forbidden))
            if bad:
                out[name] = bad
    return out


def test_the_scan_sees_every_package() -> None:
    packages = {name for name in MODULES if (ROOT / name.replace(".", "/") / "__init__.py").exists()}
    assert {"broker", "workers", "sources", "handlers", *SOURCES, *BESIDE_THE_CORE} <= packages
    assert "sources.files.observer" in MODULES["sources.files.files"]  # the scan reads imports at all


def test_broker_imports_neither_sources_nor_workers() -> None:
    assert offenders("broker", "sources", "workers") == {}


def test_sources_and_workers_never_import_each_other() -> None:
    assert offenders("sources", "workers") == {}
    assert offenders("workers", "sources") == {}


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_imports_no_other_source(source: str) -> None:
    assert offenders(source, *(s for s in SOURCES if s != source)) == {}


def test_sources_holds_only_its_three_packages() -> None:
    top = sorted(p.name for p in (ROOT / "sources").iterdir() if p.name != "__pycache__")
    assert top == ["__init__.py", "files", "http", "sqlite"]


def test_the_shared_core_imports_nothing_that_sits_beside_it() -> None:
    """The CLI, the embedded Redis and the handlers' helper use the core; the core uses none of them
    (the first name of the helper is the one module of broker/ that only re-exports it)."""
    core = {name: imported for name, imported in MODULES.items()
            if ours(name, "broker") and not ours(name, *BESIDE_THE_CORE) and name != FIRST_NAME}
    bad = {name: sorted(i for i in imported if ours(i, *BESIDE_THE_CORE, FIRST_NAME))
           for name, imported in core.items()}
    assert {name: found for name, found in bad.items() if found} == {}


def test_handlers_import_nothing_of_lambdalites_but_the_handler_api() -> None:
    lambdalite = ("broker", "workers", "sources", "handlers")
    bad = {name: sorted(i for i in imported if ours(i, *lambdalite) and not ours(i, "broker.handler_api"))
           for name, imported in MODULES.items() if ours(name, "handlers")}
    assert {name: found for name, found in bad.items() if found} == {}
