"""Per-layer sensitivity and float fallback (keras_bn/quantization/sensitivity.py,
fallback.py, export/selective.py) on the digits MLP trained here with a planted harmful
layer, in both formats: real TFLite converter, onnxruntime quantizer, LiteRT and
onnxruntime."""

import numpy as np
import pytest
import tf_keras

from keras_bn.errors import InputError, VerificationError
from keras_bn.export import QuantizationOptions, to_onnx, to_tflite
from keras_bn.quantization import fallback
from keras_bn.quantization.scoring import OutputScore
from keras_bn.quantization.sensitivity import measure, sensitivity
import digits_models
from helpers import keras_bn_cli


@pytest.fixture(scope="module")
def planted():
    """`(model, calibration, held_out)`: the trained digits MLP whose last Dense,
    "planted", has an 11th output: a logit at -1000 and below (weights -100 |N(0, 1)| on
    ReLU inputs), never the argmax, but with a range many times the ten real logits'
    (one channel with a huge range). The float model's answers are the MLP's; quantized
    per tensor, the output's int8 step swallows the real logits' differences: most of
    the ten tie on the grid (the TFLite file agreed 9.6 % when measured; the tests ask
    only < 90 %)."""
    model, calibration, held_out, _ = digits_models.trained_classifier()
    clone = tf_keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    head = tf_keras.layers.Dense(11, name="planted")
    planted = tf_keras.Model(clone.inputs, head(clone.layers[-2].output))
    kernel, bias = model.layers[-1].get_weights()
    rs = np.random.RandomState(0)
    head.set_weights([np.concatenate([kernel, -100 * np.abs(rs.randn(len(kernel), 1))], 1),
                      np.concatenate([bias, [-1000.0]])])
    same = np.argmax(planted.predict(held_out, verbose=0), -1) == np.argmax(
        model.predict(held_out, verbose=0), -1)
    assert same.all()
    return planted, calibration, held_out


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_sensitivity_ranks_the_planted_layer_first(planted, fmt):
    model, calibration, held_out = planted
    report = sensitivity(model, calibration, evaluation=held_out, fmt=fmt)
    first = report.layers[0]
    assert first.layer == "planted", report.table()
    (quantized,) = report.quantized
    assert quantized.agreement < 0.9  # the plant bites: int8 changes > 10 % of answers
    assert first.all_but[0].agreement >= 0.98  # keeping it in float wins them back
    assert first.alone[0].agreement < 0.9  # quantizing it alone loses them
    others = [s for s in report.layers if s is not first]
    assert others and all(s.alone[0].agreement >= 0.98 for s in others)
    assert report.table().splitlines()[2].startswith("planted")
    assert report.evaluated_on == "evaluation data (397 rows)"


def _float_tflite_ops(path):
    """The output tensor names of the ops of a TFLite file that compute in float (read or
    write a FLOAT32 tensor), other than QUANTIZE and DEQUANTIZE, with the signature's
    output key where TFLite renamed a model output."""
    from ai_edge_litert import schema_py_generated as schema

    content = path.read_bytes()
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    keys = {}
    for s in range(model.SignatureDefsLength()):
        for o in range(model.SignatureDefs(s).OutputsLength()):
            output = model.SignatureDefs(s).Outputs(o)
            keys[output.TensorIndex()] = output.Name().decode()
    found = []
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = ops[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        tensors = [int(t) for t in [*op.InputsAsNumpy(), *op.OutputsAsNumpy()] if t >= 0]
        if name in ("QUANTIZE", "DEQUANTIZE") or not any(
                graph.Tensors(t).Type() == schema.TensorType.FLOAT32 for t in tensors):
            continue
        out = int(op.OutputsAsNumpy()[0])
        found.append((name, graph.Tensors(out).Name().decode() + " " + keys.get(out, "")))
    return found


def _float_onnx_layers(path, names):
    """The layers (of `names`) of an ONNX file whose Gemm/Conv/MatMul weights are float
    initializers (no DequantizeLinear before them)."""
    import onnx

    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return {scope for node in model.graph.node if node.op_type in ("Gemm", "Conv", "MatMul")
            and node.input[1] in floats for scope in node.name.split("/") if scope in names}


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_fallback_keeps_exactly_the_layers_it_names_in_float(planted, fmt, tmp_path):
    """With min_agreement 0.98 and float fallback, the file keeps "planted" alone in
    float (read back from the file: its one float op), reaches the target on the
    evaluation rows, and records what the integer file agreed and weighed."""
    model, calibration, held_out = planted
    export_to = {"tflite": to_tflite, "onnx": to_onnx}[fmt]
    path = tmp_path / f"fallback.{fmt}"
    result = export_to(model, path, quantize=QuantizationOptions(
        "int8", calibration=calibration, evaluation=held_out, min_agreement=0.98,
        float_fallback=True))
    record = result.fallback
    assert record.layers == ["planted"]
    assert record.agreement_before < 0.9 <= 0.98 <= record.agreement
    assert result.evaluation[0].agreement == record.agreement
    assert record.size_bytes_integer > 0 and record.files_tried >= 2
    assert "1 layer(s) kept in float (planted)" in record.summary(result.size_bytes)
    from keras_bn.export.selective import float_layers_named

    assert float_layers_named(fmt, path.read_bytes()) == ["planted"]  # the file says so
    if fmt == "tflite":
        computed = _float_tflite_ops(path)
        assert [op for op, _ in computed] == ["FULLY_CONNECTED"], computed
        assert "planted" in computed[0][1]
    else:
        names = {layer.name for layer in model.layers}
        assert _float_onnx_layers(path, names) == {"planted"}
    without = export_to(model, tmp_path / f"plain.{fmt}", quantize=QuantizationOptions(
        "int8", calibration=calibration, evaluation=held_out))
    assert without.fallback is None
    assert without.evaluation[0].agreement == record.agreement_before


def test_fallback_needs_a_target_and_an_int8_mode(planted, tmp_path):
    model, calibration, held_out = planted
    with pytest.raises(InputError, match="float_fallback keeps layers in float until the "
                                         "file reaches min_agreement; give min_agreement"):
        to_tflite(model, tmp_path / "m.tflite", quantize=QuantizationOptions(
            "int8", calibration=calibration, float_fallback=True))
    with pytest.raises(InputError, match="float_fallback is for mode 'int8' or 'int8-io' "
                                         "in TFLite, not 'int16x8'"):
        to_tflite(model, tmp_path / "m.tflite", quantize=QuantizationOptions(
            "int16x8", calibration=calibration, min_agreement=0.9, float_fallback=True))
    with pytest.raises(InputError, match="float_fallback is for mode 'int8' or 'int16x8' "
                                         "in ONNX, not 'dynamic'"):
        to_onnx(model, tmp_path / "m.onnx", quantize=QuantizationOptions(
            "dynamic", evaluation=held_out, min_agreement=0.9, float_fallback=True))
    assert not list(tmp_path.iterdir())


def _scores(agreement, sqnr):
    return [OutputScore("y", 100, agreement, 0.0, 0.0, sqnr)]


def test_fallback_keeps_the_most_harmful_first_and_the_fewest():
    """A pure check of the search, on a table of scores: the layers are ranked by what
    keeping each in float wins back, and added until the target is met."""
    won = {"a": 0.2, "b": 3.0, "c": 1.0}

    def score(kept):
        sqnr = 30 + sum(won[k] for k in kept)
        agreement = 0.9 + 0.03 * ("b" in kept) + 0.04 * ("c" in kept)
        return _scores(agreement, sqnr)

    quantized, ranked = measure(list(won), score, alone=False)
    assert [s.layer for s in ranked] == ["b", "c", "a"]
    assert quantized[0].agreement == 0.9
    record = fallback.choose(list(won), score, 0.95, "test")
    assert record.layers == ["b", "c"] and record.agreement == pytest.approx(0.97)
    met = fallback.choose(list(won), score, 0.9, "test")  # the integer file suffices
    assert met.layers == [] and met.files_tried == 1
    with pytest.raises(VerificationError, match="no float fallback reaches min_agreement "
                                                "99.00%: the best of .* files agrees 97.00%"):
        fallback.choose(list(won), score, 0.99, "test")

    def judge(kept):  # another model's view: "a" alone moves it, the ranking stays
        return _scores(0.8 + 0.16 * ("a" in kept) + 0.01 * len(kept), 0.0)

    judged = fallback.choose(list(won), score, 0.95, "test", judge=judge)
    assert judged.layers == ["b", "c", "a"] and judged.agreement == pytest.approx(0.99)
    assert judged.agreement_before == pytest.approx(0.8) and judged.files_tried == 6


def test_cli_sensitivity_and_fallback(planted, tmp_path):
    """`keras-bn sensitivity` prints the table with the planted layer first and writes
    the plot; `export --float-fallback` prints the layers it kept; `--float-fallback`
    without `--min-agreement` is one line, exit 2, nothing written."""
    model, calibration, held_out = planted
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "cal.npy", calibration)
    np.save(tmp_path / "held.npy", held_out)
    report = keras_bn_cli("sensitivity", tmp_path / "m.keras", "--calibration",
                          tmp_path / "cal.npy", "--eval", tmp_path / "held.npy", "--plot",
                          tmp_path / "s.png")
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip().splitlines()[2].startswith("planted"), report.stdout
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    kept = keras_bn_cli("export", tmp_path / "m.keras", "--tflite", tmp_path / "f.tflite",
                        "--int8", tmp_path / "cal.npy", "--eval", tmp_path / "held.npy",
                        "--min-agreement", "0.98", "--float-fallback")
    assert kept.returncode == 0, kept.stderr
    assert "float fallback: 1 layer(s) kept in float (planted)" in kept.stdout
    bad = keras_bn_cli("export", tmp_path / "m.keras", "--onnx", tmp_path / "g.onnx",
                       "--int8", tmp_path / "cal.npy", "--float-fallback")
    lines = [line for line in bad.stderr.splitlines() if line.startswith("keras-bn")]
    assert bad.returncode == 2 and len(lines) == 1 and "give --min-agreement" in lines[0]
    assert not (tmp_path / "g.onnx").exists()


def test_ops_belong_to_their_layers_in_both_flavours_naming():
    """tf-keras scopes ops by layer name; a Keras 3 model traced again in one graph gets
    uniquified scopes ("functional_1/dense_1" is layer "dense", "dense_1_2" is
    "dense_1"); a fused op belongs to its layer with weights."""
    from keras_bn.export.selective import layer_of

    layers, weighted = {"dense", "dense_1", "re_lu", "head"}, {"dense", "dense_1", "head"}
    assert layer_of("model/re_lu/Relu;model/dense/BiasAdd", layers, weighted,
                    "model") == "dense"
    assert layer_of("model/dense_1/MatMul", layers, weighted, "model") == "dense_1"
    assert layer_of("functional_1/dense_1/convolution", layers, weighted,
                    "functional") == "dense"
    assert layer_of("functional_1/re_lu_1/Relu;functional_1/dense_1_2/BiasAdd", layers,
                    weighted, "functional") == "dense_1"
    assert layer_of("functional_1/head_1/MatMul/MatMulAddFusion", layers, weighted,
                    "functional") == "head"
    assert layer_of("StatefulPartitionedCall:0", layers, weighted, "functional") is None


def test_fallback_judges_by_the_reference_it_is_given(planted, tmp_path):
    """With `reference=`, fallback ranks and judges its candidates against that model,
    as the file's own score is: the agreement it records is the written file's
    evaluation against the reference. The reference here is the planted MLP with its
    hidden weights perturbed, so that it disagrees with the model exported on some
    held-out rows (a judge by the exported model records other figures)."""
    model, calibration, held_out = planted
    reference = tf_keras.models.clone_model(model)
    rs = np.random.RandomState(3)
    weights = model.get_weights()
    reference.set_weights([w + 0.3 * np.std(w) * rs.randn(*w.shape) if w.ndim == 2 and i <
                           len(weights) - 2 else w for i, w in enumerate(weights)])
    differ = np.mean(np.argmax(reference.predict(held_out, verbose=0), -1) != np.argmax(
        model.predict(held_out, verbose=0), -1))
    assert 0.02 < differ < 0.2, differ  # apart enough to tell the judges apart
    result = to_tflite(model, tmp_path / "fallback.tflite", quantize=QuantizationOptions(
        "int8", calibration=calibration, evaluation=held_out, min_agreement=0.75,
        float_fallback=True, reference=reference))
    record = result.fallback
    assert record.agreement == result.evaluation[0].agreement
    without = to_tflite(model, tmp_path / "plain.tflite", quantize=QuantizationOptions(
        "int8", calibration=calibration, evaluation=held_out, reference=reference))
    assert record.agreement_before == without.evaluation[0].agreement
