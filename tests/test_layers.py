"""Imports point down: every module of `unimodal` imports only its own layer and those below it.

The table is ARCHITECTURE.md's; the two change together. Imports inside functions count too (a
lazy import is still a dependency), and so do `from unimodal import x` and relative imports.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "unimodal"

# Layer of each top-level module or folder of `unimodal`, bottom (0) to top; a module may import
# its own layer and any below.
LAYERS = {
    "__init__": 0, "config": 0, "limits": 0, "utils": 0, "text": 0,
    "dit": 1, "rae": 1, "data": 1,
    "unified": 2,
    "train": 3, "convert": 3, "chat": 3, "evaluation": 3,
    "finetune": 4,
    "shapes": 5,
    "cli": 6, "commands": 6, "shipped": 6, "__main__": 6,
}

def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The `unimodal...` modules that `path` (module `name`) imports anywhere in its body, as
    absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            # `from unimodal import shapes` imports the subpackage unimodal.shapes.
            found.update(f"{module}.{a.name}" if module == "unimodal" else module for a in node.names)
    return {m for m in found if m == "unimodal" or m.startswith("unimodal.")}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top == "__version__":  # `from unimodal import __version__` reads unimodal/__init__.py
        top = "__init__"
    assert top in LAYERS, f"{module}: {top} has no layer in LAYERS (add it here and to ARCHITECTURE.md)"
    return LAYERS[top]


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target in imports_of(path, name):
            if layer_of(target) > layer_of(name):
                found.add((name, target))
    return found


def test_every_folder_has_a_layer():
    for entry in PACKAGE.iterdir():
        if entry.suffix == ".py" or (entry.is_dir() and (entry / "__init__.py").is_file()):
            assert entry.stem in LAYERS, f"unimodal/{entry.name} has no layer (add it to LAYERS and ARCHITECTURE.md)"


def test_no_module_imports_a_layer_above_its_own():
    found = sorted(upward_imports())
    assert not found, "imports of a higher layer (see ARCHITECTURE.md):\n" + "\n".join(
        f"  {m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})" for m, t in found)


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..train import loop\n    import unimodal.commands.demo\n")
    found = imports_of(source, "unimodal.data.probe")
    assert found == {"unimodal.train", "unimodal.commands.demo"}
    assert [layer_of(m) > layer_of("unimodal.data.probe") for m in sorted(found)] == [True, True]
