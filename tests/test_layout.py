"""The architecture as a test: layers import only downwards, no module import cycles, theory without torch.

Layers, bottom to top: core < data < rf < theory < images < commands. A module may import classdiff modules of
its own layer or of lower layers only (top-level ``classdiff/__init__.py`` and ``__main__.py`` are the facade and
may import anything, lazily). Imports are read from the source (every ``import``/``from ... import`` anywhere in
the file, lazy ones inside functions included), so the test does not depend on what a run happens to import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import classdiff

LAYERS = ("core", "data", "rf", "theory", "images", "commands")
ROOT = Path(classdiff.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """classdiff modules imported by the file (``from classdiff.x import y`` counts y if it is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("classdiff"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if not mod.startswith("classdiff"):
                continue
            found.add(mod)
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (ROOT.parent / Path(*sub.split(".")) / "__init__.py").exists():
                    found.add(sub)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for p in ROOT.rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def test_every_module_lives_in_a_layer():
    graph = _graph()
    stray = sorted(m for m in graph if _layer(m) is None and m not in ("classdiff", "classdiff.__main__"))
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


def _source(module: str) -> Path:
    base = ROOT.parent / Path(*module.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"


def test_imports_point_down_only():
    graph = _graph()
    upward = []
    for mod, deps in graph.items():
        lm = _layer(mod)
        if lm is None:
            continue
        for dep in deps:
            ld = _layer(dep)
            if dep != "classdiff" and (ld is None or ld > lm):
                upward.append(f"{mod} -> {dep}")
        # the facade re-exports every layer: importing anything but __version__ from it hides an upward import
        for node in ast.walk(ast.parse(_source(mod).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "classdiff" and not node.level:
                upward += [f"{mod} -> classdiff.{a.name} (through the facade)" for a in node.names
                           if a.name != "__version__"]
    assert not upward, "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            # a package's __init__ importing its own submodules is not a cycle of logic
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d):], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_theory_data_and_core_import_no_torch():
    code = ("import importlib, pkgutil, sys\n"
            "import classdiff\n"
            "for layer in ('core', 'data', 'theory'):\n"
            "    pkg = importlib.import_module('classdiff.' + layer)\n"
            "    for info in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(f'classdiff.{layer}.{info.name}')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    graph = _graph()
    for mod in graph:
        if _layer(mod) in (LAYERS.index("core"), LAYERS.index("data"), LAYERS.index("theory")):
            tree = ast.parse(_source(mod).read_text())
            torch_imports = [n.lineno for n in ast.walk(tree)
                             if (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "torch" for a in n.names))
                             or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "torch")]
            assert not torch_imports, f"{mod} imports torch (lines {torch_imports})"
