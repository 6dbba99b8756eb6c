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
                for alias in node.names:  # `from keras_bn.cli import demo` imports a module
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
    assert "keras_bn.cli.command" not in edges["keras_bn.cli.demo"]


def _imported_names(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _package_files():
    return list(ROOT.rglob("*.py")) + list((ROOT.parent / "export").rglob("*.py"))


def test_keras_is_imported_in_one_place_per_flavour():
    """tf-keras only in `flavours/tf_keras.py`, Keras 3 only in `flavours/keras3.py`: the
    rest of the package (layers, math, plan, rewrite, exporters, CLI) reaches Keras
    through them."""
    owners = {"tf_keras": ROOT / "flavours" / "tf_keras.py",
              "keras": ROOT / "flavours" / "keras3.py"}
    found = [f"{path.relative_to(ROOT.parent)} imports {name}"
             for path in _package_files() for name in _imported_names(path)
             if name.split(".")[0] in owners and path != owners[name.split(".")[0]]]
    assert found == []


def test_flavours_are_chosen_only_through_flavour_of():
    """No module outside `keras_bn/flavours/` imports a flavour module: they ask
    `keras_bn.flavour.of(obj)` (or `.named(name)`), so no code picks one by hand."""
    found = [f"{path.relative_to(ROOT.parent)} imports {name}"
             for path in _package_files() if (ROOT / "flavours") not in path.parents
             for name in _imported_names(path) if name.startswith("keras_bn.flavours.")]
    assert found == []


#: Names one flavour alone has, and why: a SavedModel folder's Keras metadata is
#: tf-keras's (Keras 3 neither writes nor reads it).
ONE_FLAVOUR_ONLY = {"saved_metadata"}


def test_both_flavours_offer_the_same_names():
    from keras_bn import flavour

    public = [{n for n in vars(flavour.named(name)) if not n.startswith("_")} - {"np", "tf"}
              for name in flavour.NAMES]
    assert public[0] ^ public[1] == ONE_FLAVOUR_ONLY


def test_the_layers_are_written_once():
    """Both flavours' classes are the one core (keras_bn.layers.batch_normalization) on
    their own base class: no flavour defines a method of its own."""
    import keras_bn.keras3
    from keras_bn.layers import batch_normalization, batch_renormalization

    for ours in (keras_bn.BatchNormalization, keras_bn.BatchRenormalization,
                 keras_bn.keras3.BatchNormalization, keras_bn.keras3.BatchRenormalization):
        core = (batch_renormalization.BatchRenormalization if "Renorm" in ours.__name__
                else batch_normalization.BatchNormalization)
        assert issubclass(ours, core)
        own = {name for name, value in vars(ours).items()  # reading __annotations__
               if not (name == "__annotations__" and not value)}  # creates an empty one
        assert own - {"__doc__", "__module__", "__qualname__", "_flavour", "__dict__",
                      "__weakref__", "__firstlineno__", "__static_attributes__"} == set(), ours


def test_tests_mirror_the_package_with_the_flavour_a_parameter():
    """tests/<role>/ for the package's roles (layers, folding, export, ...), and no test
    module named after a flavour: what both flavours do alike takes the `flavour`
    fixture instead of a second file."""
    tests = ROOT.parent / "tests"
    roles = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} | {"export"}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders and folders <= roles, folders - roles
    named = [str(p.relative_to(tests)) for p in tests.rglob("test_*.py")
             if any(f in p.stem for f in ("keras3", "tf_keras", "keras2"))]
    assert named == []


def test_tests_import_what_a_user_installs():
    """No test imports the repository's `export/` folder by its folder name (`import
    export`, `from export...`): that is a second copy of `keras_bn.export` no installed
    user has (`export.x.C is not keras_bn.export.x.C`)."""
    tests = ROOT.parent / "tests"
    found = [f"{path.relative_to(tests)} imports {name}" for path in tests.rglob("*.py")
             for name in _imported_names(path)
             if name == "export" or name.startswith("export.")]
    assert found == []
