"""The files keras_bn reads and writes: model files loaded safely (`load_model`), the
user's data files (`load_arrays`), and every output written atomically (`output`).

One module per concept: `load` (formats, the check, the load), `allowlist` (what a file
may ask for), `configs` (the configuration walk), `hdf5`, `saved_model`, `private_copy`,
`custom` (`--import`), `arrays` (numpy files) and `output` (where and how outputs are
written).
"""

from keras_bn.files.arrays import load_arrays
from keras_bn.files.configs import refusals
from keras_bn.files.load import check_safe, load_model, model_format, stored_configs, writer

__all__ = ["check_safe", "load_arrays", "load_model", "model_format", "refusals",
           "stored_configs", "writer"]
