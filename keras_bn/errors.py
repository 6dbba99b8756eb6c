"""The errors keras_bn raises on purpose, so that callers (and the CLI's exit status) can
tell a bad input and a failed check from a bug.

Both are ValueErrors, so code that caught ValueError before keeps working.
"""


class InputError(ValueError):
    """Bad input: a file, a model or an argument keras_bn cannot use. The message names
    it, the value, and the fix."""


class UnsafeModelError(InputError):
    """The model file references Python code (a Lambda layer, a module to import) and
    unsafe loading was not asked for."""


class VerificationError(ValueError):
    """A rewritten or exported model's outputs differ from the original's beyond tolerance."""
