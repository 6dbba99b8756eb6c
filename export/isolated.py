"""Running an exported file in a child process, so that a runtime that crashes on it
(LiteRT aborting on an int8 file, say) never takes the caller's process down.

`IsolatedRuntime(kind, path)` starts this file as a script in a fresh Python (it imports
only numpy and the runtime, not TensorFlow or keras_bn: ~0.3 s to start) and sends it
input batches over a pipe; the child runs them and sends the outputs back, with the time
the runtime itself took. A child that dies (a signal, an exit) becomes a
`VerificationError` naming the file and the signal. Frames are numpy `.npz` bytes read
with `allow_pickle=False` in both directions.
"""

import io
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable

_HEADER = struct.Struct("<Q")
_RUNTIMES = {"tflite": "LiteRT", "tflite-tensors": "LiteRT", "onnx": "onnxruntime"}


def _send(stream, arrays):
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    stream.write(_HEADER.pack(buffer.tell()) + buffer.getvalue())
    stream.flush()


def _receive(stream):
    """The arrays of the next frame, or None at the end of the stream."""
    import numpy as np

    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def _text(value):
    import numpy as np

    return np.array(json.dumps(value))


class TimedRun:
    """`run(inputs) -> outputs` of a file open in an `IsolatedRuntime`, whose `seconds()`
    is the runtime's own time of the last call (the pipe to the child is not timed)."""

    def __init__(self, runtime: "IsolatedRuntime", run: Callable[[list], list]):
        self.runtime, self.run = runtime, run

    def __call__(self, inputs: list) -> list:
        return self.run(inputs)

    def seconds(self) -> float | None:
        return self.runtime.seconds


class IsolatedRuntime:
    """A runtime session on one file, in a child process.

    Attributes:
      inputs: `[(name, numpy dtype name)]` of the file's inputs, in the file's order.
      outputs: the file's output names.
      quantization: `{name: (scale, zero_point)}` of the integer inputs and outputs that
        stand for real values (a TFLite "int8-io" file's), so that
        `real = scale * (q - zero_point)`; empty for other files.
      seconds: how long the runtime took for the last call (inside the child).
    """

    def __init__(self, kind, path):
        self.kind, self.path, self.seconds = kind, os.fspath(path), None
        self._child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), kind, self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        described = self._reply("loading")
        self.inputs = [tuple(pair) for pair in json.loads(str(described["inputs"]))]
        self.outputs = json.loads(str(described["outputs"]))
        self.quantization = {name: tuple(pair) for name, pair in
                             json.loads(str(described["quantization"])).items()}

    def __call__(self, feed):
        """Runs one batch: `feed` maps input names to arrays; returns name -> array."""
        try:
            _send(self._child.stdin, feed)
        except (BrokenPipeError, OSError):
            pass  # the child died: _reply says how
        reply = self._reply("running")
        self.seconds = float(reply.pop("__seconds__"))
        return reply

    def _reply(self, doing):
        from keras_bn.errors import VerificationError

        reply = _receive(self._child.stdout)
        if reply is None:
            code = self._child.wait()
            how = (f"killed by {signal.Signals(-code).name}" if code < 0 else
                   f"exit status {code}")
            raise VerificationError(f"{_RUNTIMES[self.kind]} crashed {doing} {self.path} "
                                    f"({how}); the file cannot be verified")
        if "__error__" in reply:
            raise VerificationError(f"{_RUNTIMES[self.kind]} failed {doing} {self.path}: "
                                    f"{json.loads(str(reply['__error__']))}")
        return reply

    def close(self):
        assert self._child.stdin is not None and self._child.stdout is not None  # pipes
        if self._child.poll() is None:
            self._child.stdin.close()
            try:
                self._child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._child.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _histograms(interpreter, feed, runner):
    """Runs `feed` and returns, for each `[tensor index, low, high, bins]` of its
    `__histograms__` entry, the counts of that tensor's values in `bins` equal bins over
    [low, high] (values outside count in the end bins), as `h<index>`, and for each
    tensor index of its `__values__` entry (if any) the tensor itself, as `v<index>`."""
    import numpy as np

    wanted = json.loads(str(feed.pop("__histograms__")))
    whole = json.loads(str(feed.pop("__values__", "[]")))
    runner(**feed)
    counts = {}
    for index, low, high, bins in wanted:
        values = np.clip(interpreter.get_tensor(int(index)).ravel(), low, high)
        counts[f"h{index}"] = np.histogram(values, int(bins), (low, high))[0]
    for index in whole:
        counts[f"v{index}"] = np.array(interpreter.get_tensor(int(index)))
    return counts


def _session(kind, path):
    """`(inputs, outputs, quantization, run)` for the file: run(feed) -> {name: array}.
    "tflite-tensors" keeps every intermediate tensor, so that a feed with a
    `__histograms__` entry returns histograms of them (`_histograms`)."""
    if kind in ("tflite", "tflite-tensors"):
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path,
                                  experimental_preserve_all_tensors=kind != "tflite")
        runner = interpreter.get_signature_runner()
        details = {**runner.get_input_details(), **runner.get_output_details()}
        inputs = [(name, detail["dtype"].__name__)
                  for name, detail in runner.get_input_details().items()]
        quantization = {name: [float(d["quantization"][0]), int(d["quantization"][1])]
                        for name, d in details.items() if d["quantization"][0]}
        return (inputs, list(runner.get_output_details()), quantization,
                lambda feed: (_histograms(interpreter, feed, runner)
                              if "__histograms__" in feed else runner(**feed)))
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    inputs = [(i.name, i.type) for i in session.get_inputs()]
    return inputs, outputs, {}, lambda feed: dict(zip(outputs, session.run(None, feed)))


def _failure(kind, path, error):
    """The error as one line; for LiteRT's "Node number N (OP) failed to prepare", with
    the op's output tensors named (the file's own names, which say the layer)."""
    import re

    text = " ".join(f"{type(error).__name__}: {error}".split())
    found = re.search(r"Node number (\d+) \((\w+)\)", text)
    if kind.startswith("tflite") and found:
        try:
            from ai_edge_litert import schema_py_generated as schema

            with open(path, "rb") as f:
                graph = schema.Model.GetRootAsModel(f.read(), 0).Subgraphs(0)
            op = graph.Operators(int(found.group(1)))
            names = [graph.Tensors(int(t)).Name().decode(errors="replace")
                     for t in op.OutputsAsNumpy()]
            text += f" (the {found.group(2)} op writing {', '.join(map(repr, names))})"
        except Exception:  # noqa: BLE001 - the runtime's own words still go back
            pass
    return text


def _serve(kind, path):
    import time

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        inputs, outputs, quantization, run = _session(kind, path)
    except Exception as error:  # noqa: BLE001 - reported to the parent as a failure
        _send(stdout, {"__error__": _text(_failure(kind, path, error))})
        return
    _send(stdout, {"inputs": _text(inputs), "outputs": _text(outputs),
                   "quantization": _text(quantization)})
    while (feed := _receive(stdin)) is not None:
        try:
            start = time.perf_counter()
            got = run(feed)
            _send(stdout, {**got, "__seconds__": time.perf_counter() - start})
        except Exception as error:  # noqa: BLE001
            _send(stdout, {"__error__": _text(_failure(kind, path, error))})


if __name__ == "__main__":
    # Run as a script: this folder (holding onnx.py, tflite.py) must not shadow packages.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    _serve(sys.argv[1], sys.argv[2])
