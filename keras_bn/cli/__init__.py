"""The `keras-bn` command line: `command` (its `main`, the console script), `demo` (the
demo command) and `progress` (progress lines)."""

from keras_bn.cli.command import main

__all__ = ["main"]
