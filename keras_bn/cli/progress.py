"""Progress lines for multi-step work, shared by the command line and the demo."""

import sys
import time


class Steps:
    """Progress of multi-step work on stderr: `[2/4] fold ... 0.8 s`."""

    def __init__(self, total, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr  # looked up now: the CLI may have replaced it

    def run(self, label, fn, *args, **kwargs):
        self.done += 1
        print(f"[{self.done}/{self.total}] {label} ...", end="", flush=True, file=self.stream)
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException as error:
            print(" failed", file=self.stream, flush=True)
            if not hasattr(error, "keras_bn_step"):  # the CLI's message names the step
                try:
                    setattr(error, "keras_bn_step", label)
                except AttributeError:  # an exception type without a __dict__
                    pass
            raise
        print(f" {time.perf_counter() - start:.1f} s", file=self.stream, flush=True)
        return result
