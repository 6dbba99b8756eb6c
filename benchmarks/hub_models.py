"""keras-hub vision models built from their constructors (no preset: presets download
weights), small enough for CPU tests: one per family, 64x64 RGB images.

Each entry is `name -> builder()`; a builder imports keras_hub only when called, so
importing this module costs nothing.
"""

IMAGE = (64, 64, 3)


def _hub():
    import keras_hub

    return keras_hub.models


def resnet_v1():
    return _hub().ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[2, 2],
        stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=IMAGE)


def resnet_v2():
    return _hub().ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[2, 2],
        stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        use_pre_activation=True, image_shape=IMAGE)


def mobilenet_v3():
    return _hub().MobileNetBackbone(
        stackwise_expansion=[[40, 56], [64, 144]], stackwise_num_blocks=[2, 2],
        stackwise_num_filters=[[16, 16], [24, 24]], stackwise_kernel_size=[[3, 3], [5, 5]],
        stackwise_num_strides=[[2, 1], [2, 1]], stackwise_se_ratio=[[None, None], [0.25, 0.25]],
        stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2]], depthwise_stride=2, depthwise_residual=False,
        last_layer_filter=96, output_num_filters=64, input_activation="hard_swish", output_activation="hard_swish",
        input_num_filters=16, image_shape=IMAGE, depthwise_filters=8, squeeze_and_excite=0.5)


def hgnetv2():
    return _hub().HGNetV2Backbone(
        depths=[1, 1], embedding_size=16, hidden_sizes=[32, 64], stem_channels=[3, 8, 16],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(16, 8, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, True],
        image_shape=IMAGE)


def resnet_classifier():
    return _hub().ResNetImageClassifier(backbone=resnet_v1(), num_classes=5)


BACKBONES = {"ResNetV1": resnet_v1, "ResNetV2": resnet_v2, "MobileNetV3": mobilenet_v3,
             "HGNetV2": hgnetv2}
TASKS = {"ResNetImageClassifier": resnet_classifier}
