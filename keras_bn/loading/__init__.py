"""Loading model files safely (`load_model`) and the user's data files (`load_arrays`).

One module per concept: `load` (formats, the check, the load), `allowlist` (what a file
may ask for), `configs` (the configuration walk), `hdf5`, `saved_model`, `private_copy`,
`custom` (`--import`) and `arrays` (numpy files).
"""

from keras_bn.loading.arrays import load_arrays
from keras_bn.loading.configs import refusals
from keras_bn.loading.load import check_safe, load_model, model_format, stored_configs, writer

__all__ = ["check_safe", "load_arrays", "load_model", "model_format", "refusals",
           "stored_configs", "writer"]
