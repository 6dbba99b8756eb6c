"""BN statistics measured on data: `measure` (a layer's input statistics, recorded and
merged exactly) and `recalibration` (`keras_bn.recalibrate`); the callbacks that use them
during `fit` are the public module `keras_bn.callbacks`."""
