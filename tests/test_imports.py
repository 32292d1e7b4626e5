"""Layers import downward only: a reader follows data one way (models -> sampling -> eval -> tools, and
models -> train), so each package can be read, tested and replaced without the ones above it."""
import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "codi_jax"
# {package: packages (or top-level modules) of codi_jax it must never import, even inside a function}
FORBIDDEN = {
    "models": ("sampling", "eval", "train", "experiments", "convert", "sample", "evaluate", "precompute"),
    "diffusion": ("models", "sampling", "eval", "train", "experiments", "sample", "evaluate"),
    "parallel": ("models", "sampling", "eval", "train", "experiments", "sample", "evaluate"),
    "data": ("sampling", "eval", "train", "experiments", "sample", "evaluate"),
    "sampling": ("train", "eval", "experiments", "sample", "evaluate", "precompute"),
    "eval": ("train", "experiments", "sample", "evaluate", "precompute"),
}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every codi_jax module `path` imports (`from codi_jax import x` counts as codi_jax.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("codi_jax.")}


def upward_imports(package: str) -> list[str]:
    forbidden = tuple(f"codi_jax.{name}" for name in FORBIDDEN[package])
    return sorted(f"{path.relative_to(PACKAGE.parent)} imports {name}"
                  for path in (PACKAGE / package).rglob("*.py") for name in imported_modules(path)
                  if name in forbidden or name.startswith(tuple(f + "." for f in forbidden)))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package):
    assert upward_imports(package) == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "codi_jax"
    (fake / "sampling").mkdir(parents=True)
    (fake / "sampling" / "weights.py").write_text("def f():\n    from codi_jax.train import handoff\n")
    (fake / "sampling" / "ok.py").write_text("from codi_jax.models import catalogue\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_imports("sampling") == ["codi_jax/sampling/weights.py imports codi_jax.train",
                                          "codi_jax/sampling/weights.py imports codi_jax.train.handoff"]
