"""The benchmark code's own logic: interleaving, ratios, tables, results; the twin builder.
No test here asserts a time."""

import json

import numpy as np
import pytest
import tf_keras

import keras_bn
from benchmarks import harness, inference
from keras_bn.folding import without_batch_norm
from keras_bn.layers.find import is_batch_norm
from helpers import randomize_bn

L = tf_keras.layers


class FakeClock:
    """A clock each contender advances by a known amount, so timings are exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleave_runs_warmup_then_alternates_and_divides_by_inner():
    clock, calls = FakeClock(), []

    def contender(name, seconds):
        def run():
            calls.append(name)
            clock.now += seconds
        return run

    timings = harness.interleave({"a": contender("a", 2.0), "b": contender("b", 1.0)},
                                 repeats=3, warmup=1, inner=2, clock=clock, cpu_clock=clock)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert timings["a"].wall == [2.0] * 3 and timings["b"].cpu == [1.0] * 3
    row = harness.Row("case", "a", "b", timings["a"], timings["b"], target=1.5)
    assert row.cpu_ratio == 2.0 and row.wall_ratio == 2.0 and row.met is False
    assert harness.Row("case", "b", "a", timings["b"], timings["a"], 1.0).met is True


def test_medians_resist_one_outlier():
    timing = harness.Timing(wall=[1.0, 1.0, 50.0], cpu=[2.0, 9.0, 2.0])
    assert timing.wall_median == 1.0 and timing.cpu_median == 2.0


def _rows():
    fast, slow = harness.Timing([0.001] * 3, [0.002] * 3), harness.Timing([0.002] * 3,
                                                                         [0.003] * 3)
    return [harness.Row("train", "ours", "theirs", fast, slow, 1.05),
            harness.Row("infer", "folded", "twin", slow, fast, 1.02),
            harness.Row("infer", "control", "twin", fast, fast)]


def test_tables_show_every_row_with_ratio_and_verdict():
    markdown = harness.markdown_table(_rows())
    lines = markdown.splitlines()
    assert lines[0].startswith("| case |") and len(lines) == 2 + 3
    assert "| 0.667 |" in lines[2] and "<= 1.05 met" in lines[2]
    assert "| 1.500 |" in lines[3] and "MISSED" in lines[3]
    assert lines[4].endswith("|  |")  # no target: no verdict
    text = harness.text_table(_rows())
    assert "ours / theirs" in text and "2.00 / 3.00" in text


def test_quick_rows_show_their_target_without_a_verdict():
    rows = _rows()
    for row in rows:
        row.judged = False
    table = harness.markdown_table(rows) + harness.text_table(rows)
    assert "MISSED" not in table and " met" not in table
    assert table.count("not judged (--quick)") == 4 and rows[1].met is None


def test_results_json_round_trip(tmp_path):
    path = tmp_path / "results.json"
    harness.write_results(_rows(), str(path), {"cores": 2})
    data = json.loads(path.read_text())
    assert data["meta"] == {"cores": 2} and len(data["rows"]) == 3
    assert data["rows"][0]["cpu_ratio"] == 2 / 3 and data["rows"][0]["met"] is True


def test_twin_has_no_bn_same_other_layers_and_biases_where_bn_was():
    inputs = tf_keras.Input((8, 8, 3))
    x = keras_bn.BatchNormalization()(L.Conv2D(4, 3, use_bias=False, name="c1")(inputs))
    x = L.BatchNormalization()(L.DepthwiseConv2D(3, use_bias=False, name="dw")(L.ReLU()(x)))
    x = L.Dense(2, name="head")(L.Flatten()(x))
    model = randomize_bn(tf_keras.Model(inputs, x))
    twin = without_batch_norm(model)
    assert not any(map(is_batch_norm, twin.layers))
    assert [l.name for l in twin.layers] == [l.name for l in model.layers
                                             if not is_batch_norm(l)]
    assert twin.get_layer("c1").use_bias and twin.get_layer("dw").use_bias
    np.testing.assert_array_equal(twin.get_layer("c1").kernel.numpy(),
                                  model.get_layer("c1").kernel.numpy())
    assert np.all(twin.get_layer("c1").bias.numpy() != 0)  # not zeros: converters keep it
    assert not model.get_layer("c1").use_bias  # the input model is untouched


def test_inference_variants_share_the_architecture():
    inputs = tf_keras.Input((6,))
    model = randomize_bn(tf_keras.Model(inputs, L.BatchNormalization()(L.Dense(3)(inputs))))
    variants = inference.variants(model)
    assert list(variants) == list(inference.VARIANTS)
    assert [len(v.layers) for v in variants.values()] == [3, 2, 2, 2]


def test_float16_reference_is_the_folded_model_with_float16_weights():
    from benchmarks.export_coverage import float16_reference

    inputs = tf_keras.Input((6,))
    model = randomize_bn(tf_keras.Model(inputs, L.BatchNormalization()(L.Dense(3)(inputs))))
    model.get_layer(index=1).kernel.assign(np.full((6, 3), 0.1, "float32"))  # not in float16
    reference = float16_reference(model)
    assert not any(map(is_batch_norm, reference.layers))
    folded = keras_bn.fold(model)
    for want, got in zip(folded.get_weights(), reference.get_weights()):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    assert np.any(reference.get_weights()[0] != folded.get_weights()[0])
    np.testing.assert_array_equal(model.get_layer(index=1).kernel.numpy(), np.float32(0.1))


def test_coverage_table_counts_ok_cells_and_shows_routes_not_run():
    from benchmarks.export_coverage import ROUTES, table

    row = {"model": "M", "family": "F", "flavour": "tf_keras",
           "keras_bn onnx": {"status": "ok", "error": 1e-6},
           "tf2onnx onnx": {"status": "failed", "detail": "ValidationError: PartitionedCall"},
           "keras tflite": {"status": "wrong", "error": 0.5}}
    text = table([row])
    assert "| tf_keras | F (M) | ok (1.0e-06) |" in text and "wrong (5.0e-01)" in text
    assert "failed: ValidationError: PartitionedCall" in text
    assert text.count("not run") == len(ROUTES) - 3
    assert text.splitlines()[-1].startswith("| all | 1 models | 1/1 | 0/1 |")


@pytest.mark.heavy
def test_quick_run_covers_every_case_and_judges_nothing(tmp_path):
    """`python -m benchmarks --quick` end to end (about a minute): every case group runs,
    the output says what a quick run is, and no row claims met or MISSED."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out",
                             str(tmp_path)], cwd=root, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MISSED" not in result.stdout and " met" not in result.stdout
    assert result.stdout.startswith("--quick: small shapes")
    data = json.loads((tmp_path / "results-quick.json").read_text())
    assert data["meta"]["quick"] is True
    cases = {row["case"].split()[0] for row in data["rows"]}
    assert {"train", "Keras", "MobileNetV2", "QAT"} <= cases
    assert all(r["met"] is None for r in data["rows"])
    qat = sorted(row["case"] for row in data["rows"] if row["case"].startswith("QAT"))
    cases = ["Keras 3 (jax)", "Keras 3 (tensorflow)", "Keras 3 (torch)", "tf-keras"]
    assert qat == sorted([f"QAT train step, {c}" for c in cases] +
                         [f"QAT train step, statistics frozen, {c}" for c in cases]), qat
    depth = data["meta"]["recalibration_depth"]  # passes against depth, both starts
    assert [(r["depth"], r["start"]) for r in depth] == [
        (2, "trained"), (2, "fresh"), (8, "trained"), (8, "fresh")]
    assert all(r["passes"] >= 2 for r in depth)  # the batch pass, then until still


def test_worker_runs_cases_in_children_it_replaces_and_survives_one_that_dies():
    """`benchmarks/worker.py`: what bounds `make zoo`'s memory and keeps a dead case a row."""
    import math
    import os

    from benchmarks.worker import Worker, WorkerDied

    with Worker(cases_per_worker=2) as run:
        pids = [run(os.getpid) for _ in range(4)]
        assert os.getpid() not in pids  # not this process
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]
        with pytest.raises(ValueError):  # the case's own error, raised here
            run(math.sqrt, -1.0)
        with pytest.raises(WorkerDied, match="abort"):
            run(os.abort)
        assert run(math.sqrt, 4.0) == 2.0  # a fresh child for the next case


def test_study_files_write_whole_files_and_replot_from_the_rows(tmp_path):
    from benchmarks import study_files

    out = str(tmp_path / "results")
    rows = study_files.study_rows(out, "s", lambda: [{"a": np.float32(0.5)}])
    assert json.loads((tmp_path / "results" / "s.json").read_text()) == [{"a": 0.5}]
    drawn = []
    text = study_files.publish(out, "s", rows, lambda r: f"| {r[0]['a']} |",
                               lambda r, path: drawn.append(path) or open(path, "w").close())
    assert (tmp_path / "results" / "s.md").read_text() == text == "| 0.5 |"
    assert drawn and (tmp_path / "results" / "s.png").exists()

    def crashes():
        raise KeyboardInterrupt  # a run stopped halfway

    with pytest.raises(KeyboardInterrupt):
        study_files.study_rows(out, "s", crashes)
    assert study_files.study_rows(out, "s", crashes, replot=True) == [{"a": 0.5}]
    with pytest.raises(ZeroDivisionError):  # a table that fails leaves the old one
        study_files.publish(out, "s", rows, lambda r: str(1 / 0))
    assert (tmp_path / "results" / "s.md").read_text() == "| 0.5 |"
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "s.json", "s.md", "s.png"]
