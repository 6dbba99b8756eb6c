"""Checking a SavedModel folder: its Keras metadata and the TensorFlow graph itself.

A SavedModel runs graph code of its own: resource initializers run while it loads, and a
revived layer's functions run whenever keras_bn calls the model (fold's verification
does). So besides the Keras configuration, every op of every function in its library and
of its main graph must be on `allowlist.GRAPH_OPS` (no file, process, Python or network
op). The saver's file ops (SaveV2, RestoreV2, ...) are allowed only in the functions that
nothing but the saver reaches. Asset file names must stay inside `assets/`.
"""

import os
from typing import Any

from keras_bn.errors import InputError, UnsafeModelError
from keras_bn.files import allowlist


def metadata_texts(path, shown):
    """The Keras metadata JSON strings of the SavedModel at `path`: `keras_metadata.pb`,
    or for files written before TF 2.5 the object graph's user objects (as tf-keras
    falls back to)."""
    from keras_bn import flavour

    meta = os.path.join(path, "keras_metadata.pb")
    if os.path.exists(meta):
        tf_keras: Any = flavour.named("tf_keras")  # saved_metadata: tf-keras's alone
        metadata = tf_keras.saved_metadata()
        with open(meta, "rb") as f:
            metadata.ParseFromString(f.read())
        texts = [node.metadata for node in metadata.nodes]
    else:
        graph = _saved_model(path, shown).meta_graphs[0]
        texts = [node.user_object.metadata for node in graph.object_graph_def.nodes
                 if node.WhichOneof("kind") == "user_object" and node.user_object.metadata]
    if not texts:
        raise InputError(f"{shown}: a SavedModel without Keras metadata, not a tf-keras model")
    return texts


def _saved_model(path, shown):
    from tensorflow.core.protobuf import saved_model_pb2
    from google.protobuf import message, text_format

    proto = saved_model_pb2.SavedModel()
    binary, text = (os.path.join(path, name) for name in ("saved_model.pb",
                                                           "saved_model.pbtxt"))
    try:
        if os.path.exists(binary):
            with open(binary, "rb") as f:
                proto.ParseFromString(f.read())
        elif os.path.exists(text):
            with open(text) as f:
                text_format.Parse(f.read(), proto)
        else:
            raise InputError(f"{shown}: a folder without saved_model.pb, not a SavedModel")
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise InputError(f"{shown}: unreadable saved_model.pb ({error})") from error
    return proto


def check_graph(path, shown):
    """Raises `UnsafeModelError` naming the first op of the SavedModel at `path` that is
    not on the allowlist, or an asset that leaves `assets/`."""
    for graph in _saved_model(path, shown).meta_graphs:
        for where, op in unsafe_ops(graph):
            raise UnsafeModelError(
                f"{shown}: refusing a SavedModel whose graph runs the TensorFlow op {op!r} "
                f"(in {where}): it is not pure tensor math (files, processes, Python or the "
                "network). Pass --unsafe (unsafe=True) only if you trust where the file "
                "comes from.")
        for asset in graph.asset_file_def:
            name = asset.filename
            if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
                raise UnsafeModelError(f"{shown}: refusing a SavedModel asset named {name!r} "
                                       "(outside its assets folder)")


def unsafe_ops(graph):
    """`[(where, op)]`: the ops of a MetaGraphDef that are not allowed where they are."""
    functions = {f.signature.name: f for f in graph.graph_def.library.function}
    saver = _saver_nodes(graph)
    main = [node for node in graph.graph_def.node if node.name not in saver]
    saver_reach = _reach([node for node in graph.graph_def.node if node.name in saver],
                         functions)
    # Everything else the loader may call: the other main-graph nodes and every function
    # the saver does not reach (the object graph names functions directly).
    other_roots = main + [n for name, f in functions.items() if name not in saver_reach
                          for n in f.node_def]
    saver_only = saver_reach - _reach(other_roots, functions)
    found = [("the main graph", node.op) for node in main
             if not _allowed(node.op, functions, False)]
    for name, function in functions.items():
        found += [(f"function {name!r}", node.op) for node in function.node_def
                  if not _allowed(node.op, functions, name in saver_only)]
    return found


def _allowed(op, functions, in_saver):
    return (op in allowlist.GRAPH_OPS or op in functions
            or (in_saver and op in allowlist.SAVER_OPS))


def _saver_nodes(graph):
    """Names of the main-graph nodes the saver_def points at (its save and restore)."""
    saver = graph.saver_def
    names = {saver.save_tensor_name, saver.restore_op_name, saver.filename_tensor_name}
    return {name.split(":")[0].lstrip("^") for name in names if name}


def _called(node, functions):
    """Functions a node calls: as its op, or through a function-valued attribute."""
    called = {node.op} & functions.keys()
    for value in node.attr.values():
        if value.HasField("func"):
            called.add(value.func.name)
        called.update(f.name for f in value.list.func)
    return called & functions.keys()


def _reach(nodes, functions):
    """Names of the functions `nodes` call, directly or through other functions."""
    seen, todo = set(), [name for node in nodes for name in _called(node, functions)]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [n for node in functions[name].node_def for n in _called(node, functions)]
    return seen
