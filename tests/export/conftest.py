"""Trained models the export tests share."""

import pytest

import keras_bn


@pytest.fixture(scope="session")
def mobilenet():
    """`(folded model, calibration rows, held-out rows)` of the int8 study's
    MobileNet-style net (Conv2D, DepthwiseConv2D, 1x1 Conv2D, Dense; BN + ReLU),
    trained 8 epochs on synthesized shapes (75 % held-out accuracy: small margins)."""
    from benchmarks import study_data

    model, (calibration, held_out, _) = study_data.trained("mobilenet", 0)
    return keras_bn.fold(model), calibration, held_out[:200]
