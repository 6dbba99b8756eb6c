"""The package's shape: no module hidden by a function, modules import one way."""

import ast
import importlib
import pathlib

import keras_bn

ROOT = pathlib.Path(keras_bn.__file__).parent


def _module_name(path):
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """keras_bn modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("keras_bn"):
                found.add(node.module)
                for alias in node.names:  # `from keras_bn import demo` imports a module
                    candidate = f"{node.module}.{alias.name}"
                    if (ROOT.parent / (candidate.replace(".", "/") + ".py")).exists():
                        found.add(candidate)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("keras_bn")}
    return found


def test_subpackages_are_not_shadowed_by_functions():
    plan = importlib.import_module("keras_bn.folding.plan")
    assert keras_bn.folding.plan is plan
    assert callable(keras_bn.fold) and callable(keras_bn.fold_plan)


def test_no_import_cycles_between_modules():
    files = {_module_name(p): p for p in ROOT.rglob("*.py") if p.name != "__init__.py"}
    # Edges between modules (a package's __init__ only re-exports, so it is left out).
    edges = {m: _imports(p) & set(files) - {m} for m, p in files.items()}

    def cycle_from(start, node, seen):
        for nxt in edges[node]:
            if nxt == start:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if cycle_from(start, nxt, seen):
                    return True
        return False

    assert [m for m in edges if cycle_from(m, m, set())] == []
    assert "keras_bn.cli" not in edges["keras_bn.demo"]


def test_keras_is_imported_in_one_place_per_flavour():
    """tf-keras only in `_keras.py`, Keras 3 only in `_keras3.py`: the rest of the package
    (math, plan, rewrite, exporters, CLI) reaches Keras through them."""
    owners = {"tf_keras": "_keras.py", "keras": "_keras3.py"}
    found = []
    for path in list(ROOT.rglob("*.py")) + list((ROOT.parent / "export").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top in owners and path.name != owners[top]:
                    found.append(f"{path.name} imports {name}")
    assert found == []
