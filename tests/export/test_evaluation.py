"""Scoring an exported file against the Keras model on data: `to_tflite`'s and
`to_onnx`'s evaluation on a model trained here (scikit-learn's digits), real LiteRT and
onnxruntime."""

import numpy as np
import pytest
import tf_keras
from ai_edge_litert.interpreter import Interpreter

import keras_bn
from keras_bn import export
from keras_bn.export import QuantizationOptions as Q
from keras_bn.quantization import scoring
import digits_models


@pytest.fixture(scope="module")
def trained():
    return digits_models.trained_classifier()[:3]


def _file_outputs(path, x):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name, _), = runner.get_input_details().items()
    return list(runner(**{name: x}).values())[0]


def test_int8_is_scored_and_verified_on_held_out_calibration_rows(trained, tmp_path):
    model, calibration, _ = trained
    result = export.to_tflite(model, tmp_path / "q.tflite", latency_batch=None,
                              quantize=Q("int8", calibration=calibration))
    assert result.evaluated_on == "held-out calibration rows (60 of 300, not calibrated on)"
    assert result.verified_on == "samples (60 rows)"  # the same rows, not random noise
    (scores,) = result.evaluation
    assert 0.9 <= scores.agreement <= 1 and scores.rows == 60 and scores.sqnr_db > 10
    assert result.max_error == pytest.approx(scores.max_error, rel=1e-6)
    # the scores are what LiteRT and Keras give on those rows, computed here apart
    _, held = scoring.held_out_split([calibration])
    got = _file_outputs(tmp_path / "q.tflite", held[0])
    want = model.predict(held[0], verbose=0)
    assert scores.agreement == np.mean(np.argmax(got, -1) == np.argmax(want, -1))
    assert scores.max_error == pytest.approx(np.max(np.abs(got - want)), rel=1e-5)


def test_evaluation_data_scores_every_mode_and_min_agreement_refuses(trained, tmp_path):
    model, calibration, held_out = trained
    for mode in ("dynamic", "float16", "int8-io"):
        result = export.to_tflite(model, tmp_path / f"{mode}.tflite", latency_batch=None,
                                  quantize=Q(mode, evaluation=held_out,
                                             calibration=calibration if mode == "int8-io"
                                             else None))
        assert result.evaluated_on == "evaluation data (397 rows)", mode
        (scores,) = result.evaluation
        assert scores.rows == 397 and scores.agreement >= 0.9, (mode, scores)
    int8_io = scores.agreement
    assert int8_io < 1  # int8 changes some answers of this model: the minimum can bite
    with pytest.raises(keras_bn.VerificationError, match=r"top-1 agreement with the Keras "
                       r"model \d+\.\d+% on evaluation data \(397 rows\), below min_agreement "
                       r"100\.00%"):
        export.to_tflite(model, tmp_path / "refused.tflite", latency_batch=None,
                         quantize=Q("int8-io", calibration=calibration, evaluation=held_out,
                                    min_agreement=1.0))
    assert not (tmp_path / "refused.tflite").exists()
    export.to_tflite(model, tmp_path / "kept.tflite", latency_batch=None,
                     quantize=Q("int8-io", calibration=calibration, evaluation=held_out,
                                min_agreement=int8_io))
    assert (tmp_path / "kept.tflite").exists()


def test_min_agreement_that_cannot_be_judged_is_an_input_error(trained, tmp_path):
    model, calibration, held_out = trained
    with pytest.raises(ValueError, match="between 0 and 1"):
        export.to_tflite(model, tmp_path / "m.tflite",
                         quantize=Q(evaluation=held_out, min_agreement=99))
    with pytest.raises(ValueError, match="no rows to judge it on"):
        export.to_tflite(model, tmp_path / "m.tflite", quantize=Q("dynamic", min_agreement=0.9))
    inputs = tf_keras.Input((64,))
    regression = tf_keras.Model(inputs, tf_keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match=r"no output has a class axis \(output shapes "
                                         r"\[\(None, 1\)\]\)"):
        export.to_tflite(regression, tmp_path / "r.tflite",
                         quantize=Q(evaluation=held_out, min_agreement=0.9))
    with pytest.raises(ValueError, match="evaluation data.*64"):
        export.to_tflite(model, tmp_path / "m.tflite", quantize=Q(evaluation=held_out[:, :10]))
    assert not list(tmp_path.iterdir())
