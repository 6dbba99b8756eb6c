"""Scoring an exported file against the Keras model on data: the pure scores, and
`to_tflite`'s evaluation on a model trained here (scikit-learn's digits), real LiteRT."""

import numpy as np
import pytest
import tf_keras
from ai_edge_litert.interpreter import Interpreter

import keras_bn
from keras_bn import export
from export import evaluation
import digits_models


def test_sqnr_is_signal_over_error_energy_in_db():
    ref = np.array([[1.0, -1.0], [1.0, 1.0]])
    assert evaluation.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # 4 / 0.04
    assert evaluation.sqnr_db(ref, ref) == float("inf")


def test_agreement_only_for_outputs_with_a_class_axis():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    got = ref.copy()
    got[0] = [0.9, 0.1]
    assert evaluation.top1_agreement(ref, got) == 0.75
    assert evaluation.top1_agreement(ref[:, :1], got[:, :1]) is None  # a regression output
    assert evaluation.top1_agreement(ref[:, 0], got[:, 0]) is None
    seg = np.zeros((1, 2, 2, 3)); seg[..., 0] = 1  # every position of a map is compared
    other = seg.copy(); other[0, 0, 0] = [0, 1, 0]
    assert evaluation.top1_agreement(seg, other) == 0.75
    scores = evaluation.score(["p", "v"], [ref, ref[:, :1]], [got, got[:, :1]])
    assert [s.agreement for s in scores] == [0.75, None]
    assert scores[0].max_error == pytest.approx(0.8) and scores[0].rows == 4
    assert evaluation.lowest_agreement(scores) == 0.75
    assert evaluation.lowest_agreement(scores[1:]) is None


def test_held_out_split_is_disjoint_seeded_and_keeps_order():
    x = np.arange(50)[:, None]
    calibration, held = evaluation.held_out_split([x, x * 10])
    assert len(held[0]) == 10 and len(calibration[0]) == 40
    assert set(held[0].ravel()).isdisjoint(calibration[0].ravel())
    assert np.all(np.diff(calibration[0].ravel()) > 0)
    np.testing.assert_array_equal(held[1], held[0] * 10)  # rows stay together across inputs
    assert not set(held[0].ravel()) <= set(range(40, 50))  # at random, not the last rows
    again = evaluation.held_out_split([x, x * 10])
    np.testing.assert_array_equal(again[1][0], held[0])
    assert evaluation.held_out_split([x[:49]])[1] is None  # too few rows to spare any
    assert len(evaluation.held_out_split([x[:10]], minimum=2)[1][0]) == 2


@pytest.fixture(scope="module")
def trained():
    return digits_models.trained_classifier()[:3]


def _file_outputs(path, x):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name, _), = runner.get_input_details().items()
    return list(runner(**{name: x}).values())[0]


def test_int8_is_scored_and_verified_on_held_out_calibration_rows(trained, tmp_path):
    model, calibration, _ = trained
    result = export.to_tflite(model, tmp_path / "q.tflite", quantize="int8",
                              representative_data=calibration, latency_batch=None)
    assert result.evaluated_on == "held-out calibration rows (60 of 300, not calibrated on)"
    assert result.verified_on == "samples (60 rows)"  # the same rows, not random noise
    (scores,) = result.evaluation
    assert 0.9 <= scores.agreement <= 1 and scores.rows == 60 and scores.sqnr_db > 10
    assert result.max_error == pytest.approx(scores.max_error, rel=1e-6)
    # the scores are what LiteRT and Keras give on those rows, computed here apart
    _, held = evaluation.held_out_split([calibration])
    got = _file_outputs(tmp_path / "q.tflite", held[0])
    want = model.predict(held[0], verbose=0)
    assert scores.agreement == np.mean(np.argmax(got, -1) == np.argmax(want, -1))
    assert scores.max_error == pytest.approx(np.max(np.abs(got - want)), rel=1e-5)


def test_evaluation_data_scores_every_mode_and_min_agreement_refuses(trained, tmp_path):
    model, calibration, held_out = trained
    for mode in ("dynamic", "float16", "int8-io"):
        result = export.to_tflite(model, tmp_path / f"{mode}.tflite", quantize=mode,
                                  representative_data=calibration, evaluation_data=held_out,
                                  latency_batch=None)
        assert result.evaluated_on == "evaluation data (397 rows)", mode
        (scores,) = result.evaluation
        assert scores.rows == 397 and scores.agreement >= 0.9, (mode, scores)
    int8_io = scores.agreement
    assert int8_io < 1  # int8 changes some answers of this model: the minimum can bite
    with pytest.raises(keras_bn.VerificationError, match=r"top-1 agreement with the Keras "
                       r"model \d+\.\d+% on evaluation data \(397 rows\), below min_agreement "
                       r"100\.00%"):
        export.to_tflite(model, tmp_path / "refused.tflite", quantize="int8-io",
                         representative_data=calibration, evaluation_data=held_out,
                         min_agreement=1.0, latency_batch=None)
    assert not (tmp_path / "refused.tflite").exists()
    export.to_tflite(model, tmp_path / "kept.tflite", quantize="int8-io",
                     representative_data=calibration, evaluation_data=held_out,
                     min_agreement=int8_io, latency_batch=None)
    assert (tmp_path / "kept.tflite").exists()


def test_min_agreement_that_cannot_be_judged_is_an_input_error(trained, tmp_path):
    model, calibration, held_out = trained
    with pytest.raises(ValueError, match="between 0 and 1"):
        export.to_tflite(model, tmp_path / "m.tflite", evaluation_data=held_out,
                         min_agreement=99)
    with pytest.raises(ValueError, match="no rows to judge it on"):
        export.to_tflite(model, tmp_path / "m.tflite", quantize="dynamic", min_agreement=0.9)
    inputs = tf_keras.Input((64,))
    regression = tf_keras.Model(inputs, tf_keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match=r"no output has a class axis \(output shapes "
                                         r"\[\(None, 1\)\]\)"):
        export.to_tflite(regression, tmp_path / "r.tflite", evaluation_data=held_out,
                         min_agreement=0.9)
    with pytest.raises(ValueError, match="evaluation data.*64"):
        export.to_tflite(model, tmp_path / "m.tflite", evaluation_data=held_out[:, :10])
    assert not list(tmp_path.iterdir())
