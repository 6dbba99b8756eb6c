# Every target sets itself up on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2
# oneDNN's CPU kernels (NCHW convolutions: the channels_first models) on any x86 CPU, not
# only on those with AVX-512 where TensorFlow enables them by itself.
export TF_ENABLE_ONEDNN_OPTS ?= 1
export PYTHONDONTWRITEBYTECODE = 1

.PHONY: install test typecheck install-check demo bench zoo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The stamp is rebuilt whenever pyproject.toml changes, so a new dependency is installed.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $@

install: $(VENV)/.installed

# Two worker processes (pytest-xdist) throughout: most of the time is Keras's
# single-threaded Python (building, rebuilding, eager calls of 800-layer models), so two
# processes on two cores nearly halve it (the unit tests: 8.6 -> 5.3 min). The zoo's folds
# and its exports run as separate sessions: a worker's memory grows with each model it
# builds (TensorFlow keeps caches past clear_session), and one worker that had folded half
# the zoo reached 18 GB converting InceptionResNetV2 and was OOM-killed.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=10 -n 2
test: install typecheck
	$(PYTEST) --ignore=tests/test_zoo.py
	$(PYTEST) tests/test_zoo.py -k "not export"
	$(PYTEST) tests/test_zoo.py -k export

# mypy over keras_bn/ and the exporters (pyproject.toml's [tool.mypy]), staged as the
# wheel lays them out: export/ installs as keras_bn.export, the name their imports use.
typecheck: install
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r keras_bn build/typecheck/ && cp -r export build/typecheck/keras_bn/export
	cd build/typecheck && $(abspath $(PY)) -m mypy --config-file ../../pyproject.toml keras_bn

# The README's Install section followed as written, in fresh virtualenvs on a clean
# clone (from the clone, then from the built wheel), and its quick start run in each.
install-check:
	.ci/install_check

demo: install
	$(VENV)/bin/keras-bn demo

clean:
	rm -rf $(VENV) build dist *.egg-info

bench: install
	$(PY) -m benchmarks

# Every tf_keras.applications constructor folded (float64 parity), one per family and the
# hand-built models exported to ONNX and TFLite; writes benchmarks/results/zoo.md; then
# Keras 3's applications (zoo_keras3.md) and keras-hub's vision models (zoo_keras_hub.md).
# Each case runs in a child process replaced every 8 cases (benchmarks/worker.py): in one
# process the run grew to 24 GB and was OOM-killed.
zoo: install
	$(PY) -m benchmarks.zoo
	$(PY) -m benchmarks.zoo --flavour keras3
	$(PY) -m benchmarks.zoo --flavour keras_hub
