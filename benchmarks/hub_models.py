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


def cspnet():
    return _hub().CSPNetBackbone(
        stem_filters=16, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 1],
        stackwise_strides=[1, 2], stackwise_num_filters=[16, 32], block_type="dark_block", stage_type="dark",
        image_shape=IMAGE)


def efficientnet():
    return _hub().EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 3], stackwise_num_repeats=[1, 1, 1],
        stackwise_input_filters=[16, 16, 24], stackwise_output_filters=[16, 24, 32],
        stackwise_expansion_ratios=[1, 4, 4], stackwise_squeeze_and_excite_ratios=[0, 0, 0.25],
        stackwise_strides=[1, 2, 2], stackwise_block_types=["fused", "fused", "unfused"],
        width_coefficient=1.0, depth_coefficient=1.0, input_shape=IMAGE)


def densenet():
    return _hub().DenseNetBackbone(stackwise_num_repeats=[1, 1], growth_rate=8,
                                   image_shape=IMAGE)


def xception():
    return _hub().XceptionBackbone(stackwise_conv_filters=[[8, 16], [16, 32], [32, 32]],
                                   stackwise_pooling=[True, True, False], image_shape=IMAGE)


def _resnet_encoder():
    return _hub().ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64, 64], stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block", image_shape=IMAGE)


def deeplab_v3():
    return _hub().DeepLabV3Backbone(
        image_encoder=_resnet_encoder(), spatial_pyramid_pooling_key="P5",
        low_level_feature_key="P2", upsampling_size=8, dilation_rates=[2, 4],
        projection_filters=16, image_shape=IMAGE)


def retinanet():
    return _hub().RetinaNetBackbone(image_encoder=_resnet_encoder(), min_level=3,
                                    max_level=5, use_p5=False, image_shape=IMAGE)


def resnet_classifier():
    return _hub().ResNetImageClassifier(backbone=resnet_v1(), num_classes=5)


def deeplab_segmenter():
    return _hub().DeepLabV3ImageSegmenter(backbone=deeplab_v3(), num_classes=3)


def retinanet_detector():
    return _hub().RetinaNetObjectDetector(backbone=retinanet(), num_classes=3,
                                          bounding_box_format="yxyx")


BACKBONES = {"ResNetV1": resnet_v1, "ResNetV2": resnet_v2, "MobileNetV3": mobilenet_v3,
             "HGNetV2": hgnetv2, "CSPNet": cspnet, "EfficientNet": efficientnet,
             "DenseNet": densenet, "Xception": xception, "DeepLabV3": deeplab_v3,
             "RetinaNet": retinanet}
TASKS = {"ResNetImageClassifier": resnet_classifier,
         "DeepLabV3ImageSegmenter": deeplab_segmenter,
         "RetinaNetObjectDetector": retinanet_detector}
ALL = {**BACKBONES, **TASKS}
