"""Models built the way keras-hub builds its own, in either flavour: a custom block that
holds a BN, drops its `name` in its constructor and needs a tuple argument; a functional
subclass whose config holds constructor arguments, not a graph; one nested in another."""


def classes(keras):
    """`(Block, Net, Task)` for `keras` (tf_keras or Keras 3)."""
    L = keras.layers

    class Block(L.Layer):
        def __init__(self, filters, kernel=(3, 3), name=None, **kwargs):
            super().__init__(**kwargs)  # `name` not passed on, as keras-hub's blocks do
            if not isinstance(kernel, tuple):
                raise TypeError(f"kernel must be a tuple, got {kernel!r}")
            self.filters, self.kernel = filters, kernel
            self.conv = L.Conv2D(filters, kernel + (), padding="same", name="inner_conv")
            self.bn = L.BatchNormalization(name="inner_bn")

        def call(self, x):
            return self.bn(self.conv(x))

        def get_config(self):
            return {**super().get_config(), "filters": self.filters, "kernel": self.kernel}

    class Net(keras.Model):
        def __init__(self, width=4, **kwargs):
            inputs = keras.Input((8, 8, 3), name="image")
            x = L.ReLU(name="relu")(Block(width, name="block")(inputs))
            x = L.BatchNormalization(name="bn")(L.Conv2D(width, 1, name="conv")(x))
            x = L.GlobalAveragePooling2D(name="pool")(x)
            super().__init__(inputs, L.Dense(3, name="features")(x), **kwargs)
            self.width = width

        def get_config(self):
            return {"width": self.width, "name": self.name, "trainable": self.trainable}

    class Task(keras.Model):
        def __init__(self, backbone, **kwargs):
            inputs = keras.Input((8, 8, 3), name="pixels")
            x = L.BatchNormalization(name="head_bn")(backbone(inputs))
            super().__init__(inputs, L.Dense(2, name="logits")(x), **kwargs)
            self.backbone = backbone

        def get_config(self):
            return {"backbone": self.backbone.get_config(), "name": self.name}

    return Block, Net, Task
