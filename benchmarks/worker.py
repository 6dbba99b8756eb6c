"""Benchmark cases run in a child process, so that a long run's memory stays bounded and
a case that dies (killed for memory, a crash in a converter) becomes a row, not the end
of the run.

Why: `make zoo` folds and exports ~120 models in one run. In one process its resident
memory grew to 24 GB and the kernel killed it at the first export, although each case
clears the Keras session and nothing of keras_bn holds a model (folding the same model
six times in a loop stays at ~1.6 GB). What grew was freed memory that glibc's allocator
keeps: after ConvNeXtBase the process held 6.0 GB, 1.9 GB after `malloc_trim(0)`. A
worker therefore trims after each case and is replaced after `cases_per_worker` cases (a
fresh one starts in ~5 s, the TensorFlow import); what the allocator and TensorFlow keep
across cases goes with it.
"""

import concurrent.futures
import ctypes
import gc
import importlib
import multiprocessing


def _release():
    """Returns the freed heap to the system (glibc only; elsewhere nothing to do)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _call(module, function, args, kwargs):
    try:
        return getattr(importlib.import_module(module), function)(*args, **kwargs)
    finally:
        _release()


class Worker:
    """Runs `module.function(*args, **kwargs)` in a spawned child process.

    Args:
      cases_per_worker: cases one child runs before it is replaced.

    `worker(fn, *args, **kwargs)` returns what `fn` returns (`fn` must be a module-level
    function, its arguments and result picklable). An exception raised by `fn` is raised
    here; a child that dies raises `WorkerDied`, and the next case gets a fresh child.
    """

    def __init__(self, cases_per_worker: int = 8):
        self.cases_per_worker = cases_per_worker
        self._pool = None

    def __call__(self, fn, *args, **kwargs):
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=self.cases_per_worker)
        future = self._pool.submit(_call, fn.__module__, fn.__name__, args, kwargs)
        try:
            return future.result()
        except concurrent.futures.process.BrokenProcessPool as error:
            self.close()
            raise WorkerDied(f"{fn.__name__}{args}: the case's process died ({error}); "
                             "killed for memory, if the kernel log says so") from None

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WorkerDied(RuntimeError):
    """The child process running a case died before it answered."""
