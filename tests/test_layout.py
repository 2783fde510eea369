"""The package layout: no import cycle inside src/open_r1, no private name imported across modules, and each package's
``__init__`` names what it offers (every name in ``__all__`` importable)."""

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "open_r1"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``open_r1`` import of a file, at any depth (lazy imports inside functions count): (module, names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "open_r1":
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "open_r1"]
    return found


def edges(name: str) -> set[str]:
    """The modules ``name`` imports: ``from open_r1.video import decode`` names the submodule, else the module."""
    targets = set()
    for module, names in imports(MODULES[name]):
        submodules = {f"{module}.{n}" for n in names} & set(MODULES)
        targets |= submodules or {module}
        if submodules != {f"{module}.{n}" for n in names}:
            targets.add(module)  # some of the names are attributes of the module itself
    # A package's __init__ re-exporting its own submodules is how a package offers them, not a dependency.
    return {t for t in targets if t in MODULES and not (MODULES[name].name == "__init__.py" and t.startswith(name))}


def find_cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges(node)):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in MODULES:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    assert find_cycle() is None, " -> ".join(find_cycle())


def test_the_cycle_check_sees_lazy_imports(tmp_path, monkeypatch):
    # The check must catch a cycle made of imports inside functions (how data.py and video.py used to meet).
    fake = {"open_r1.a": tmp_path / "a.py", "open_r1.b": tmp_path / "b.py"}
    fake["open_r1.a"].write_text("def f():\n    from open_r1.b import g\n")
    fake["open_r1.b"].write_text("from open_r1 import a\n\ndef g():\n    return a\n")
    monkeypatch.setitem(globals(), "MODULES", fake | {"open_r1": PACKAGE / "__init__.py"})
    assert find_cycle() == ["open_r1.a", "open_r1.b", "open_r1.a"]


def test_data_and_video_are_independent():
    assert not any(t.startswith("open_r1.video") for t in edges("open_r1.data"))
    video = [name for name in MODULES if name.startswith("open_r1.video")]
    assert video and not any("open_r1.data" in edges(name) for name in video)


def test_no_private_name_is_imported_across_modules():
    private = [
        f"{name}: from {module} import {n}"
        for name, path in MODULES.items()
        for module, names in imports(path)
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("package", ["open_r1.video", "open_r1.evaluation", "open_r1.trainer"])
def test_each_package_names_what_it_offers(package):
    module = importlib.import_module(package)
    assert module.__doc__ and module.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
    assert sorted(module.__all__) == sorted(set(module.__all__))


MAX_MODULE_LINES = 600


def test_no_module_is_over_600_lines():
    """A module a researcher reads top to bottom: past 600 lines a file holds more than one idea (the trainer held
    its decoding helpers at 745 lines, preprocessing its worker pool at 731)."""
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
