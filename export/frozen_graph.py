"""The TensorFlow graph tf2onnx converts: the model's serving function with its variables
frozen into constants and every function call inlined.

tf2onnx converts the ops of one graph; a function call left in it (a `PartitionedCall` or
`StatefulPartitionedCall`) has no ONNX counterpart, so the file fails `onnx.checker`.
Freezing inlines most calls, but not those TensorFlow marks as not to be inlined:
tf-keras runs a grouped convolution (RegNet's) as a `tf.function(jit_compile=True)` on
CPU, and keras-hub's MobileNetV3 and HGNetV2 blocks call compiled functions of their
own. Here each such call is replaced by the body of its function, until none is left.
"""

from tensorflow.core.framework import graph_pb2

#: The ops that call a function of the graph's library.
CALLS = ("PartitionedCall", "StatefulPartitionedCall")


def frozen_graph(function):
    """`(graph_def, input tensor names, output tensor names)` of a concrete function:
    variables as constants (tf2onnx's own freezing options), calls inlined."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    frozen = convert_variables_to_constants_v2(function, lower_control_flow=False,
                                               aggressive_inlining=True)
    return (inline_calls(frozen.graph.as_graph_def()), [t.name for t in frozen.inputs],
            [t.name for t in frozen.outputs])


def inline_calls(graph_def):
    """`graph_def` with every call of a function of its library replaced by the
    function's body (nested calls too).

    The body's nodes are named `<call>/<node>`, its arguments become Identity nodes of
    what the call was given, and whatever read the call's outputs reads the body's
    results. A graph that had calls loses its control edges: in a frozen inference graph
    they only ordered variable reads, which are constants now (and grappler's constant
    folding fails on a control edge to a folded inlined node: measured on HGNetV2).
    """
    import tensorflow as tf

    library = {f.signature.name: f for f in graph_def.library.function}
    had_calls = False
    with tf.Graph().as_default():
        tf.graph_util.import_graph_def(graph_def, name="")  # the library, for nested calls
        while True:
            calls = {node.name: library[node.attr["f"].func.name] for node in graph_def.node
                     if node.op in CALLS and node.attr["f"].func.name in library}
            if not calls:
                break
            had_calls = True
            graph_def = _inlined(graph_def, calls)
    if had_calls:
        for node in graph_def.node:
            data = [i for i in node.input if not i.startswith("^")]
            del node.input[:]
            node.input.extend(data)
    return graph_def


def _inlined(graph_def, calls):
    """A copy of `graph_def` with each node of `calls` (name -> FunctionDef) replaced by
    the function's body."""
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    results = {}  # "call:k" (and "call") -> the body's tensor
    for node in graph_def.node:
        if node.name in calls:
            results.update(_add_body(node, calls[node.name], out))
        else:
            out.node.add().CopyFrom(node)
    for node in out.node:
        inputs = [i for i in node.input if not (i.startswith("^") and i[1:] in calls)]
        del node.input[:]
        node.input.extend(results.get(i, i) for i in inputs)
    return out


def _add_body(call, function, out):
    """Adds the body of `function` for the node `call` to `out`; returns the call's
    output tensor names -> the body's."""
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

    body, tensor_names = function_def_to_graph_def(function)
    prefix = call.name + "/"
    given = [i for i in call.input if not i.startswith("^")]
    arguments = [arg.name for arg in function.signature.input_arg]
    for node in body.node:
        new = out.node.add()
        if node.name in arguments:
            new.name, new.op = prefix + node.name, "Identity"
            new.attr["T"].type = node.attr["dtype"].type
            new.input.append(given[arguments.index(node.name)])
            continue
        new.CopyFrom(node)
        new.name = prefix + node.name
        del new.input[:]
        new.input.extend("^" + prefix + i[1:] if i.startswith("^") else prefix + i
                         for i in node.input)
    results = {f"{call.name}:{k}": prefix + tensor_names[function.ret[arg.name]]
               for k, arg in enumerate(function.signature.output_arg)}
    if results:
        results[call.name] = results[f"{call.name}:0"]
    return results
