"""The package's one dependency direction (gptoss/__init__.py), checked on the source: every import
of a gptoss module, at the top of a file or inside a function, goes down the ranks, never up and
never sideways into a peer. The model's three facades are the only exceptions, and they are lazy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gptoss"

# lower ranks never import higher ones; different layers of one rank never import each other
RANKS = {
    "util": 0,
    "config": 1,
    "kv_cache": 2,
    "model": 3,
    "data": 4,
    "checkpoints": 5,
    "train": 6,
    "inference": 6,
    "inspection": 6,
    "serve": 7,
    "cli": 8,
}
# `gptoss` itself re-exports the core (GPT, GPTConfig); `python -m gptoss` is the command line
PACKAGE_LAYERS = {"gptoss": "model", "gptoss.__main__": "cli"}
# GPT.from_pretrained / save_pretrained / generate, as in nanoGPT and transformers: imported when called
FACADES = {
    ("gptoss.model", "gptoss.checkpoints.load"),
    ("gptoss.model", "gptoss.checkpoints.export"),
    ("gptoss.model", "gptoss.inference.generation"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The layer of a gptoss module: its subpackage, or the core module it is."""
    if module in PACKAGE_LAYERS:
        return PACKAGE_LAYERS[module]
    name = module.split(".")[1]
    if name not in RANKS:
        raise AssertionError(f"{module} is in no layer: give gptoss.{name} a rank in RANKS (and in gptoss/__init__.py)")
    return name


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def gptoss_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported gptoss module, whether the import is at module level) for every import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptoss":
            for alias in node.names:  # `from gptoss.inference import cpu_kernel` imports a module
                submodule = f"{node.module}.{alias.name}"
                found.append((submodule if is_module(submodule) else node.module, id(node) in top_level))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top_level) for a in node.names if a.name.split(".")[0] == "gptoss"]
    return found


def all_imports() -> list[tuple[str, str, bool]]:
    return [(module_name(path), imported, top) for path in sorted(PACKAGE.rglob("*.py")) for imported, top in gptoss_imports(path)]


def test_every_import_goes_down_the_ranks():
    wrong = []
    for importer, imported, _ in all_imports():
        source, target = layer(importer), layer(imported)
        if source == target or (importer, imported) in FACADES:
            continue
        if RANKS[target] >= RANKS[source]:
            kind = "a peer" if RANKS[target] == RANKS[source] else "a higher layer"
            wrong.append(f"{importer} imports {imported} ({kind}: {source} -> {target})")
    assert not wrong, "imports against the dependency rule:\n" + "\n".join(wrong)


def test_the_facades_are_the_only_upward_imports_and_they_are_lazy():
    upward = {(a, b): top for a, b, top in all_imports() if RANKS[layer(b)] > RANKS[layer(a)]}
    assert set(upward) == FACADES  # a facade that is gone must leave the list too
    assert not any(upward.values()), "a facade must be imported inside the method that uses it"


@pytest.mark.parametrize("module", ["gptoss.model", "gptoss"])
def test_importing_the_model_loads_only_the_core(module):
    code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith('gptoss'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(loaded) == {"gptoss", "gptoss.config", "gptoss.kv_cache", "gptoss.model", "gptoss.util", "gptoss.util.checks"}
