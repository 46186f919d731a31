"""pyproject's dependencies match the imports: every third-party package the library imports is
declared, every declared package is imported somewhere, and the library imports without the extras."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unimodal"

# Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "huggingface_hub": "huggingface-hub"}
# Declared without an import, and why.
NOT_IMPORTED = {"pytest-timeout": "a pytest plugin (pytest --timeout N); pytest loads it, nothing imports it"}
LOCAL = {"unimodal", "conftest", "convert_reference"}          # this repository's own modules
OPTIONAL_ERRORS = {"ImportError", "ModuleNotFoundError"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: _normalise(re.match(r"[A-Za-z0-9._-]+", req).group(0))
    extras = {k: {name(r) for r in reqs} for k, reqs in project.get("optional-dependencies", {}).items()}
    return {name(r) for r in project["dependencies"]}, extras


def _third_party(module: str) -> str | None:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in LOCAL:
        return None
    return _normalise(DISTRIBUTION.get(top, top))


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(k, ast.Name) and k.id in OPTIONAL_ERRORS for k in kinds):
            return True
    return False


def _imports(folder: Path):
    """(distribution, where, guarded) for every absolute import under `folder`; guarded: inside a
    function and inside a `try` that catches ImportError."""
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))

        def visit(node, in_function, in_try):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    ([node.module] if node.level == 0 else [])
                for module in modules:
                    dist = _third_party(module)
                    if dist:
                        yield dist, f"{path.relative_to(ROOT)}:{node.lineno}", in_function and in_try
            in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for child in ast.iter_child_nodes(node):
                guarded = in_try or (isinstance(node, ast.Try) and child in node.body and _catches_import_error(node))
                yield from visit(child, in_function, guarded)

        yield from visit(tree, False, False)


def _availability_checked() -> set[str]:
    """Packages the library checks for with importlib.util.find_spec("name") before it imports them."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "find_spec"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(_normalise(DISTRIBUTION.get(node.args[0].value, node.args[0].value)))
    return names


def test_every_library_import_is_declared():
    required, extras = _declared()
    optional = set().union(*extras.values())
    checked = _availability_checked()
    missing = []
    for dist, where, guarded in _imports(PACKAGE):
        if dist in required:
            continue
        if (guarded or dist in checked) and dist in optional:
            continue
        missing.append(f"{where}: {dist}" + (" (optional: declare it in an extra)" if guarded or dist in checked
                                             else " (declare it in [project] dependencies)"))
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


def test_every_declared_package_is_imported():
    required, extras = _declared()
    in_library = {dist for dist, _, _ in _imports(PACKAGE)}
    anywhere = in_library | {dist for folder in ("tests", "scripts") for dist, _, _ in _imports(ROOT / folder)}
    unused = sorted(d for d in required if d not in in_library and d not in NOT_IMPORTED)
    unused += sorted(f"{d} (extra {k!r})" for k, reqs in extras.items() for d in reqs
                     if d not in anywhere and d not in NOT_IMPORTED)
    assert not unused, "declared in pyproject.toml but imported nowhere: " + ", ".join(unused)


def test_library_imports_without_the_extras():
    # Every module loads with only the required dependencies; an extra is imported where it is used.
    required, extras = _declared()
    import_name = {_normalise(dist): name for name, dist in DISTRIBUTION.items()}
    blocked = sorted(import_name.get(d, d.replace("-", "_")) for d in set().union(*extras.values()) - required)
    code = ("import importlib, pkgutil, sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "import unimodal\n"
            "for m in pkgutil.walk_packages(unimodal.__path__, 'unimodal.'):\n"
            "    if m.name != 'unimodal.__main__':\n"
            "        importlib.import_module(m.name)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
