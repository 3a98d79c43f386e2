"""The package's layers, as the README's Layout section draws them: each imports only itself and
the layers below it (lazy imports inside functions count too), and no two modules import each
other, directly or round a longer loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom first. A module may import from its own layer and from any layer below.
LAYERS = [
    ("foundation", {"facerank.errors", "facerank.atomic", "facerank.folder_lock",
                    "facerank.progress", "facerank.units", "facerank.vectors"}),
    ("inputs", {"facerank.data"}),
    ("faces", {"facerank.faces"}),
    ("network", {"facerank.model"}),
    ("index", {"facerank.search"}),
    ("store", {"facerank.store"}),
    ("quality", {"facerank.quality"}),
    ("training", {"facerank.training"}),
    ("doors", {"facerank.api", "facerank.serve"}),
    ("scale", {"facerank.scale"}),
    ("cli", {"facerank.cli"}),
]


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "cli":
        parts = ["facerank", "cli"] + parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = list((ROOT / "facerank").rglob("*.py")) + list((ROOT / "cli").rglob("*.py"))
    return {_module_name(path): path for path in files if "demo_gallery" not in path.parts}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The facerank modules ``path`` imports (``from facerank.x import y`` counts y when y is a
    module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("facerank")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facerank"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found


def _layer(module: str) -> int | None:
    for number, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return number
    return None


def test_every_module_belongs_to_a_layer():
    modules = _modules()
    unplaced = sorted(m for m in modules
                      if _layer(m) is None and m not in ("facerank", "facerank.__main__"))
    assert not unplaced, f"modules in no layer (add them to LAYERS and the README): {unplaced}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_point_down(module):
    modules = _modules()
    if module in ("facerank", "facerank.__main__"):
        return
    mine = _layer(module)
    upward = []
    for target in _imports(modules[module], set(modules)):
        if target == "facerank":          # `from facerank import __version__`
            continue
        theirs = _layer(target)
        if theirs is not None and theirs > mine:
            upward.append(f"{target} ({LAYERS[theirs][0]})")
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports upward: {upward}"


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {t for t in _imports(path, set(modules)) if t in modules and t != name}
             for name, path in modules.items()}
    # Importing a package runs its __init__, so a module's package counts as imported too;
    # package __init__ files that re-export from their own modules are the exception.
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in visiting:
            cycles.append(trail[trail.index(node):] + [node])
            return
        if node in done:
            return
        visiting.add(node)
        for target in sorted(graph.get(node, ())):
            if target.startswith(node + "."):   # a package importing its own modules
                continue
            visit(target, trail + [target])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [name])
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_nothing_but_training_imports_the_training_loop():
    """Evaluation, calibration, the store and the server answer with a trained model; they do not
    train. Only the training commands and the Ray training runner import facerank.training."""
    modules = _modules()
    allowed = {"facerank.scale.training", "facerank.cli.training", "facerank.cli.serving"}
    offenders = sorted(name for name, path in modules.items()
                       if not name.startswith("facerank.training") and name not in allowed
                       and name != "facerank"
                       and any(t.startswith("facerank.training")
                               for t in _imports(path, set(modules))))
    assert not offenders, offenders
