"""The layout's promises: imports point inward, the emulator stands alone, and the README's tables and
code map say what the code does."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from extproc.config.legacy_env import LEGACY_ENV
from extproc.core.catalogue import CATALOGUE, ENDPOINT_NAMES, markdown_table

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "extproc"
README = (ROOT / "README.md").read_text()

# Which of the gateway's own packages each package may import (besides itself). Inward: the command
# line and the runtime at the edge, the core (and the routing and credentials it decides with) inside.
ALLOWED = {
    "core": {"routing", "auth"},
    "routing": {"auth"},
    "auth": set(),
    "config": {"core", "routing", "auth"},
    "processor": {"core", "rpc", "auth", "routing"},
    "rpc": set(),
    "compile": {"config", "core", "routing", "auth", "breaker", "usage"},
    "breaker": {"config", "sharedfloats", "rpc"},
    "usage": {"config", "breaker", "sharedfloats", "rpc"},
    "sharedfloats": set(),
    "identity": {"config", "auth"},
    "envoy_config": {"config", "core", "routing", "auth"},
    "runtime": {"compile", "config", "core", "processor", "rpc", "envoy_config", "routing", "auth", "breaker",
                "identity", "usage"},
    "emulator": set(),
}


def own_imports(path: Path) -> set[str]:
    """The top-level packages of extproc a module imports (absolute or relative)."""
    module = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module[: len(module) - node.level]
                parts = [*base, *(node.module.split(".") if node.module else [])]
                names = [parts[0]] if parts else [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "extproc":
                names = [*node.module.split(".")[1:2]] or [alias.name for alias in node.names]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("extproc."))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_inward(package: str) -> None:
    files = [PACKAGE / f"{package}.py"] if (PACKAGE / f"{package}.py").exists() else sorted((PACKAGE / package).rglob("*.py"))
    assert files
    for path in files:
        outside = own_imports(path) - {package} - ALLOWED[package]
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_readme_table_is_the_catalogue() -> None:
    table = README.split("<!-- catalogue:begin -->\n")[1].split("\n<!-- catalogue:end -->")[0]
    assert table == markdown_table()
    assert len(CATALOGUE) == table.count("\n") - 1


def test_the_readme_names_every_endpoint_option_and_variable() -> None:
    configuration = README.split("## Configuration")[1].split("\n## ")[0]
    for name in ENDPOINT_NAMES:
        assert name in configuration, name
    for variable in LEGACY_ENV:
        for name in variable.names:
            assert f"`{name}`" in configuration, name


def test_the_code_map_names_every_package() -> None:
    code_map = README.split("## Code map")[1].split("\n## ")[0]
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    for name in packages | modules:
        assert re.search(rf"`extproc/{name}[/.]", code_map), f"{name} is missing from the README's code map"
