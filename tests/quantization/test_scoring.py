"""The scores of a quantized file against the Keras model (keras_bn/quantization/scoring.py),
as pure functions of arrays."""

import numpy as np
import pytest

from keras_bn.quantization import scoring


def test_sqnr_is_signal_over_error_energy_in_db():
    ref = np.array([[1.0, -1.0], [1.0, 1.0]])
    assert scoring.sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # 4 / 0.04
    assert scoring.sqnr_db(ref, ref) == float("inf")


def test_agreement_only_for_outputs_with_a_class_axis():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    got = ref.copy()
    got[0] = [0.9, 0.1]
    assert scoring.top1_agreement(ref, got) == 0.75
    assert scoring.top1_agreement(ref[:, :1], got[:, :1]) is None  # a regression output
    assert scoring.top1_agreement(ref[:, 0], got[:, 0]) is None
    seg = np.zeros((1, 2, 2, 3)); seg[..., 0] = 1  # every position of a map is compared
    other = seg.copy(); other[0, 0, 0] = [0, 1, 0]
    assert scoring.top1_agreement(seg, other) == 0.75
    scores = scoring.score(["p", "v"], [ref, ref[:, :1]], [got, got[:, :1]])
    assert [s.agreement for s in scores] == [0.75, None]
    assert scores[0].max_error == pytest.approx(0.8) and scores[0].rows == 4
    assert scoring.lowest_agreement(scores) == 0.75
    assert scoring.lowest_agreement(scores[1:]) is None


def test_held_out_split_is_disjoint_seeded_and_keeps_order():
    x = np.arange(50)[:, None]
    calibration, held = scoring.held_out_split([x, x * 10])
    assert len(held[0]) == 10 and len(calibration[0]) == 40
    assert set(held[0].ravel()).isdisjoint(calibration[0].ravel())
    assert np.all(np.diff(calibration[0].ravel()) > 0)
    np.testing.assert_array_equal(held[1], held[0] * 10)  # rows stay together across inputs
    assert not set(held[0].ravel()) <= set(range(40, 50))  # at random, not the last rows
    again = scoring.held_out_split([x, x * 10])
    np.testing.assert_array_equal(again[1][0], held[0])
    assert scoring.held_out_split([x[:49]])[1] is None  # too few rows to spare any
    assert len(scoring.held_out_split([x[:10]], minimum=2)[1][0]) == 2
