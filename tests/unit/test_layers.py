"""The package's layers, checked on the source: imports point down, the core stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fenced"

#: Which fenced packages each layer may import (besides itself). Top-level helpers that
#: every layer may use: errors (typed exceptions), log (the structured logger), aio.
SHARED = {"fenced.errors", "fenced.log", "fenced.aio"}
#: The package itself (for ``__version__``) is not a layer.
ROOT = {"fenced", "fenced.__version__"}
ALLOWED: dict[str, set[str]] = {
    "fenced.core": {"fenced.errors"},
    "fenced.config": {"fenced.core", "fenced.errors"},
    "fenced.kernel": {"fenced.core", *SHARED},
    "fenced.dns": {"fenced.core", "fenced.kernel", *SHARED},
    "fenced.ops": {"fenced.core", "fenced.config", "fenced.kernel", "fenced.dns", *SHARED},
}

#: Modules that do I/O, read the clock or randomness: never imported by the pure core.
IMPURE = {
    "asyncio",
    "socket",
    "select",
    "selectors",
    "os",
    "sys",
    "time",
    "datetime",
    "random",
    "secrets",
    "subprocess",
    "threading",
    "ctypes",
    "pathlib",
    "shutil",
    "signal",
    "logging",
    "urllib",
    "http",
    "aiohttp",
    "prometheus_client",
    "pyroute2",
    "tomllib",
    "dns.query",
    "dns.asyncquery",
    "dns.resolver",
    "dns.asyncresolver",
    "dns.asyncbackend",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Every module a file imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _module_name(path).split(".")[: -node.level]
                names.append(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module is not None:
                names.append(node.module)
                names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _layer(module: str) -> str | None:
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _within(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down(path: Path) -> None:
    """A module of a layer imports fenced modules only from its own layer and those below it."""
    module = _module_name(path)
    layer = _layer(module)
    if layer is None:
        return  # daemon, __main__ and the shared helpers compose everything
    allowed = {layer, *ALLOWED[layer]}
    wrong = [
        name
        for name in _imports(path)
        if name.startswith("fenced.") and name not in ROOT and not _within(name, allowed)
    ]
    assert not wrong, f"{module} imports {wrong} from above its layer"


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    """The core imports no module that does I/O, reads the clock or draws randomness."""
    bad = [n for n in _imports(path) if _within(n, IMPURE)]
    assert not bad, f"{path.name} imports {bad}"


#: The pure modules of fenced.config (``files`` reads the files and the host's databases).
#: ``datetime`` is allowed there only to name TOML's date and time values in messages.
CONFIG_PURE = ("entries.py", "schema.py")


@pytest.mark.parametrize("name", CONFIG_PURE)
def test_config_grammar_and_schema_are_pure(name: str) -> None:
    """fenced.config's grammar and schema import no module that does I/O or reads the clock."""
    impure = (IMPURE - {"datetime"}) | {"pwd", "grp", "io", "stat"}
    bad = [n for n in _imports(PACKAGE / "config" / name) if _within(n, impure)]
    assert not bad, f"config/{name} imports {bad}"


def test_layers_cover_the_package() -> None:
    """Every subpackage of fenced is a known layer (a new one gets its rules here)."""
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {"data"}
    assert {f"fenced.{s}" for s in subpackages} <= set(ALLOWED)
