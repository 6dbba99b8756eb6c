"""The public API is typed: every public function, and every method keras_bn defines on a
public class, annotates each parameter and its return (`make typecheck` runs mypy over
the whole package; this pins down what the public surface must say)."""

import importlib
import inspect

import pytest

#: The public modules and what they export.
PUBLIC = ("keras_bn", "keras_bn.keras3", "keras_bn.export", "keras_bn.quantization",
          "keras_bn.callbacks")


def _methods(cls):
    """`(label, function)` of `__init__` and the public methods keras_bn's own classes in
    `cls`'s MRO define (those inherited from Keras are Keras's)."""
    for klass in cls.__mro__:
        if not klass.__module__.startswith("keras_bn"):
            continue
        for name, member in vars(klass).items():
            if inspect.isfunction(member) and (name == "__init__" or not name.startswith("_")):
                yield f"{klass.__module__}.{klass.__qualname__}.{name}", member


def _public_callables():
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                yield from _methods(obj)
            elif callable(obj):
                yield f"{module_name}.{name}", obj


def _gaps(function):
    signature = inspect.signature(function)
    gaps = [name for name, parameter in signature.parameters.items()
            if name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        gaps.append("return")
    return gaps


CALLABLES = dict(_public_callables())


def test_there_is_a_public_api_to_check():
    labels = " ".join(CALLABLES)
    for name in ("keras_bn.fold", "keras_bn.export.to_onnx", "BatchNormalization.__init__",
                 "quantize_aware", "PreciseBNCore.__init__", "FoldPlan.table"):
        assert name in labels, name


@pytest.mark.parametrize("label", sorted(CALLABLES))
def test_public_callable_is_fully_annotated(label):
    assert _gaps(CALLABLES[label]) == [], f"{label} lacks annotations"
