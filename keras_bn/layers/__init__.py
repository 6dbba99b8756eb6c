"""The normalization layers, written once: `batch_normalization` and
`batch_renormalization` hold the layers, `statistics` their math on the flavour's ops,
`fused` the TensorFlow-only kernel paths, `arguments` their checks and configs. The
public classes are that core on each flavour's base class: `tf_keras` (exported as
`keras_bn.BatchNormalization`, ...) and `keras3` (`keras_bn.keras3.*`). Importing this
package imports neither flavour."""
