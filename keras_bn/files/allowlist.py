"""What a model file may ask the loader to build without `--unsafe`: explicit lists.

Everything a file's configuration names (a class to build, a function to look up, an op
for an op layer to call, a string resolved by name) must be on one of these lists, keyed
the way the loaders resolve it; anything else is refused (`keras_bn.files.configs`).
The lists are the built-in, code-free objects of tf-keras 2.21 and Keras 3.15, written out
(not read from the installed Keras: a name a later Keras adds is refused until it is
reviewed and listed here), plus keras_bn's own layers and whatever the user registers
with `--import` (`imports=`).

Left out on purpose: `Lambda` (Python bytecode), `TFSMLayer` (loads a SavedModel from a
path), `TorchModuleWrapper` (a pickled module), `JaxLayer`/`FlaxLayer` (Python
functions), `DenseFeatures` (feature columns may read vocabulary files), the abstract
bases (`Layer`, `Wrapper`, `AbstractRNNCell`), and every function outside activations,
losses and metrics.
"""


def _names(text):
    return frozenset(text.split())


TFK_LAYERS = _names("""
    Activation ActivityRegularization Add AdditiveAttention AlphaDropout Attention Average
    AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
    BatchNormalization Bidirectional CategoryEncoding CenterCrop Concatenate Conv1D
    Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D
    ConvLSTM3D Convolution1D Convolution1DTranspose Convolution2D Convolution2DTranspose
    Convolution3D Convolution3DTranspose Cropping1D Cropping2D Cropping3D Dense
    DepthwiseConv1D DepthwiseConv2D Discretization Dot Dropout ELU EinsumDense Embedding
    Flatten GRU GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D
    GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D
    GlobalAvgPool3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D
    GlobalMaxPooling2D GlobalMaxPooling3D GroupNormalization HashedCrossing Hashing Identity
    InputLayer IntegerLookup LSTM LSTMCell LayerNormalization LeakyReLU LocallyConnected1D
    LocallyConnected2D Masking MaxPool1D MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D
    MaxPooling3D Maximum Minimum MultiHeadAttention Multiply Normalization PReLU Permute RNN
    RandomBrightness RandomContrast RandomCrop RandomFlip RandomHeight RandomRotation
    RandomTranslation RandomWidth RandomZoom ReLU RepeatVector Rescaling Reshape Resizing
    SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D SimpleRNN
    SimpleRNNCell Softmax SpatialDropout1D SpatialDropout2D SpatialDropout3D
    SpectralNormalization StackedRNNCells StringLookup Subtract TextVectorization
    ThresholdedReLU TimeDistributed UnitNormalization UpSampling1D UpSampling2D UpSampling3D
    ZeroPadding1D ZeroPadding2D ZeroPadding3D
""")

K3_LAYERS = _names("""
    Activation ActivityRegularization AdaptiveAveragePooling1D AdaptiveAveragePooling2D
    AdaptiveAveragePooling3D AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D
    Add AdditiveAttention AlphaDropout Attention AugMix AutoContrast Average
    AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
    BatchNormalization Bidirectional CategoryEncoding CenterCrop Concatenate
    ContrastLimitedAdaptiveHistogramEqualization Conv1D Conv1DTranspose Conv2D
    Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D Convolution1D
    Convolution1DTranspose Convolution2D Convolution2DTranspose Convolution3D
    Convolution3DTranspose Cropping1D Cropping2D Cropping3D CutMix Dense DepthwiseConv1D
    DepthwiseConv2D Discretization Dot Dropout ELU EinsumDense Embedding Equalization
    Flatten GRU GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D
    GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D
    GlobalAvgPool3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D GlobalMaxPooling1D
    GlobalMaxPooling2D GlobalMaxPooling3D GroupNormalization GroupQueryAttention
    HashedCrossing Hashing Identity InputLayer IntegerLookup LSTM LSTMCell
    LayerNormalization LeakyReLU Masking MaxNumBoundingBoxes MaxPool1D MaxPool2D MaxPool3D
    MaxPooling1D MaxPooling2D MaxPooling3D Maximum MelSpectrogram Minimum MixUp
    MultiHeadAttention Multiply Normalization PReLU Permute Pipeline RMSNormalization RNN
    RandAugment RandomBrightness RandomColorDegeneration RandomColorJitter RandomContrast
    RandomCrop RandomElasticTransform RandomErasing RandomFlip RandomGaussianBlur
    RandomGrayscale RandomHue RandomInvert RandomPerspective RandomPosterization
    RandomRotation RandomSaturation RandomSharpness RandomShear RandomTranslation RandomZoom
    ReLU RepeatVector Rescaling Reshape Resizing ReversibleEmbedding STFTSpectrogram
    SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D SimpleRNN
    SimpleRNNCell Softmax Solarization SpatialDropout1D SpatialDropout2D SpatialDropout3D
    SpectralNormalization StackedRNNCells StringLookup Subtract TextVectorization
    TimeDistributed UnitNormalization UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D
    ZeroPadding2D ZeroPadding3D
""")

INITIALIZERS = _names("""
    Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer
    LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal
    RandomUniform STFT STFTInitializer TruncatedNormal VarianceScaling Zeros constant
    glorot_normal glorot_uniform he_normal he_uniform identity lecun_normal lecun_uniform
    ones orthogonal random_normal random_uniform stft truncated_normal variance_scaling
    zeros
""")

REGULARIZERS = _names("""
    L1 L1L2 L2 OrthogonalRegularizer l1 l1_l2 l2 orthogonal_regularizer
""")

CONSTRAINTS = _names("""
    MaxNorm MinMaxNorm NonNeg RadialConstraint UnitNorm max_norm min_max_norm non_neg
    radial_constraint unit_norm
""")

ACTIVATIONS = _names("""
    celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh
    leaky_relu linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_shrink
    softmax softplus softsign sparse_plus sparse_sigmoid sparsemax squareplus swish tanh
    tanh_shrink threshold
""")

LOSSES = _names("""
    BinaryCrossentropy BinaryFocalCrossentropy CTC CategoricalCrossentropy
    CategoricalFocalCrossentropy CategoricalGeneralizedCrossEntropy CategoricalHinge Circle
    CosineSimilarity Dice Hinge Huber KLDivergence LogCosh MeanAbsoluteError
    MeanAbsolutePercentageError MeanSquaredError MeanSquaredLogarithmicError Poisson
    SparseCategoricalCrossentropy SquaredHinge Tversky
""")

LOSS_FUNCTIONS = _names("""
    KLD MAE MAPE MSE MSLE binary_crossentropy binary_focal_crossentropy
    categorical_crossentropy categorical_focal_crossentropy
    categorical_generalized_cross_entropy categorical_hinge circle cosine_similarity ctc
    dice hinge huber kl_divergence kld kullback_leibler_divergence log_cosh logcosh mae mape
    mean_absolute_error mean_absolute_percentage_error mean_squared_error
    mean_squared_logarithmic_error mse msle poisson sparse_categorical_crossentropy
    squared_hinge tversky
""")

METRICS = _names("""
    AUC Accuracy BinaryAccuracy BinaryCrossentropy BinaryIoU CategoricalAccuracy
    CategoricalCrossentropy CategoricalHinge ConcordanceCorrelation CosineSimilarity F1Score
    FBetaScore FalseNegatives FalsePositives Hinge IoU KLDivergence LogCoshError Mean
    MeanAbsoluteError MeanAbsolutePercentageError MeanIoU MeanMetricWrapper
    MeanRelativeError MeanSquaredError MeanSquaredLogarithmicError MeanTensor OneHotIoU
    OneHotMeanIoU PearsonCorrelation Poisson Precision PrecisionAtRecall R2Score Recall
    RecallAtPrecision RootMeanSquaredError SensitivityAtSpecificity
    SparseCategoricalAccuracy SparseCategoricalCrossentropy SparseTopKCategoricalAccuracy
    SpecificityAtSensitivity SquaredHinge Sum TopKCategoricalAccuracy TrueNegatives
    TruePositives
""")

METRIC_FUNCTIONS = _names("""
    binary_accuracy categorical_accuracy concordance_correlation pearson_correlation
    sparse_categorical_accuracy sparse_top_k_categorical_accuracy top_k_categorical_accuracy
""")

OPTIMIZERS = _names("""
    Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion Muon Nadam RMSprop SGD
    ScheduleFreeAdamW
""")


#: keras_bn's layers, registered as "keras_bn>Name" (tf-keras and Keras 3 alike).
KERAS_BN_LAYERS = _names(
    "BatchNormalization BatchRenormalization QuantizedConvBN ActivationQuantizer")
KERAS_BN_PACKAGE = "keras_bn"

#: Containers: what a whole model (or a nested one) is built as.
MODELS = _names("Functional Model Sequential")

#: Keras 3's dtype policies (a layer's "dtype" is one of these objects).
DTYPE_POLICIES = _names("DTypePolicy FloatDTypePolicy DTypePolicyMap QuantizedDTypePolicy "
                        "QuantizedFloat8DTypePolicy GPTQDTypePolicy Policy")

#: Values, not objects to look up: tensors, arrays, bytes, slices and graph references
#: (Keras's formats), and the shapes, tuples and constant tensors of a SavedModel's Keras
#: metadata (tf-keras's `json_utils`).
VALUE_CLASSES = _names("__tensor__ __numpy__ __bytes__ __keras_tensor__ __slice__ "
                       "__ellipsis__ __tuple__ TensorShape CompositeTensor")

#: TensorFlow type specs: `__typespec__` entries name one in "spec_name", a SavedModel's
#: `TypeSpec` entries by its registered name in "type_spec".
TYPE_SPECS = _names("TensorSpec RaggedTensorSpec SparseTensorSpec tf.TensorSpec "
                    "tf.RaggedTensorSpec tf.SparseTensorSpec")

#: Plain specification classes a layer's saved state holds (no code, no files).
SPECS = _names("InputSpec")

#: Category -> (the modules a loader names for its built-ins, the names).
#: tf-keras writes its public path with the "keras." prefix ("keras.layers"); Keras 3
#: writes "keras.layers" too; "builtins" is the loaders' name for a built-in function.
PUBLIC = {
    "layer": (("keras.layers", "tf_keras.layers", "keras.layers.experimental",
               "keras.layers.experimental.preprocessing"), TFK_LAYERS | K3_LAYERS | SPECS),
    "model": (("keras", "keras.models", "tf_keras", "tf_keras.models"), MODELS),
    "dtype policy": (("keras", "keras.mixed_precision", "keras.dtype_policies",
                      "tf_keras.mixed_precision"), DTYPE_POLICIES),
    "initializer": (("keras.initializers", "tf_keras.initializers"), INITIALIZERS),
    "regularizer": (("keras.regularizers", "tf_keras.regularizers"), REGULARIZERS),
    "constraint": (("keras.constraints", "tf_keras.constraints"), CONSTRAINTS),
    "loss": (("keras.losses", "tf_keras.losses"), LOSSES),
    "metric": (("keras.metrics", "tf_keras.metrics"), METRICS),
    "optimizer": (("keras.optimizers", "tf_keras.optimizers", "keras.optimizers.legacy",
                   "keras.optimizers.experimental"), OPTIMIZERS),
}

#: Functions (class_name "function"): module -> names. "builtins" makes the loaders search
#: their activations, losses and metrics modules.
FUNCTIONS = {
    module: ACTIVATIONS | LOSS_FUNCTIONS | METRIC_FUNCTIONS
    for module in ("builtins", "keras.activations", "tf_keras.activations", "keras.losses",
                   "tf_keras.losses", "keras.metrics", "tf_keras.metrics")
}

#: Built-ins the loaders name by their private module (no public path), exactly.
PRIVATE = frozenset({
    ("tf_keras.src.engine.functional", "Functional"),
    ("tf_keras.src.engine.sequential", "Sequential"),
    ("tf_keras.src.engine.training", "Model"),
    ("tf_keras.src.layers.core.tf_op_layer", "TFOpLambda"),
    ("tf_keras.src.layers.core.tf_op_layer", "SlicingOpLambda"),
    ("tf_keras.src.applications.convnext", "LayerScale"),
    ("tf_keras.src.applications.convnext", "StochasticDepth"),
    ("keras.src.models.functional", "Functional"),
    ("keras.src.models.sequential", "Sequential"),
    ("keras.src.models.model", "Model"),
    ("keras.src.applications.convnext", "LayerScale"),
    ("keras.src.applications.convnext", "StochasticDepth"),
    ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"),
    # tf-keras EfficientNetV2 serializes its Normalization's TensorFlow initializer.
    ("tensorflow.python.ops.init_ops_v2", "Constant"),
})

#: Built-ins registered under a name of their own: (module, class, registered name).
REGISTERED = frozenset({
    ("tf_keras.src.applications.inception_resnet_v2", "CustomScaleLayer",
     "Custom>CustomScaleLayer"),
})

#: Layers whose argument may be a path the layer would read: only inline values load.
PATH_ARGUMENTS = {"StringLookup": ("vocabulary",), "IntegerLookup": ("vocabulary",),
                  "TextVectorization": ("vocabulary",)}

#: Config keys whose string value the layer resolves by name, and where it looks.
NAMED_BY_STRING = (("activation", ACTIVATIONS), ("initializer", INITIALIZERS),
                   ("regularizer", REGULARIZERS), ("constraint", CONSTRAINTS))

#: tf-keras op layers (TFOpLambda, SlicingOpLambda) call `tf.<function>`. Allowed: every
#: function of these namespaces (pure tensor math: no file, process, Python or state
#: outside the model) and the top-level functions below. "compat.v1."/"compat.v2." are
#: stripped first; what is left must still be on the list (compat.v1.read_file is not).
TF_OP_NAMESPACES = ("__operators__", "math", "nn", "linalg", "signal", "bitwise", "image",
                    "random")
TF_OPS = _names("""
    abs acos acosh add add_n argmax argmin argsort asin asinh atan atan2 atanh
    batch_to_space bitcast boolean_mask broadcast_to cast clip_by_norm clip_by_value complex
    concat constant convert_to_tensor cos cosh cumsum divide dynamic_partition
    dynamic_stitch einsum ensure_shape equal exp expand_dims eye fill floor gather gather_nd
    greater greater_equal identity identity_n less less_equal linspace logical_and
    logical_not logical_or matmul maximum meshgrid minimum multiply negative norm not_equal
    one_hot ones ones_like pad parallel_stack pow range rank realdiv reduce_all reduce_any
    reduce_logsumexp reduce_max reduce_mean reduce_min reduce_prod reduce_sum repeat reshape
    reverse reverse_sequence roll round saturate_cast scalar_mul scatter_nd searchsorted
    sequence_mask shape shape_n sigmoid sign sin sinh size slice sort space_to_batch
    space_to_batch_nd split sqrt square squeeze stack stop_gradient strided_slice subtract
    tan tanh tensor_scatter_nd_add tensor_scatter_nd_max tensor_scatter_nd_min
    tensor_scatter_nd_sub tensor_scatter_nd_update tensordot tile transpose truediv
    truncatediv truncatemod unique unique_with_counts unravel_index unstack where zeros
    zeros_like
""")

#: Keras 3 op nodes: module -> Operation classes (tensor math; the control-flow ops that
#: take Python functions, Cond, Map, Scan, WhileLoop..., are left out).
KERAS3_OPS = {
    "keras.src.ops.numpy": _names("""
        Abs Absolute Add All AllClose Amax Amin Angle Any Append Arange Arccos Arccosh
        Arcsin Arcsinh Arctan Arctan2 Arctanh Argmax Argmin Argpartition Argsort Array
        ArraySplit Average Bincount BitwiseAnd BitwiseInvert BitwiseLeftShift BitwiseNot
        BitwiseOr BitwiseRightShift BitwiseXor BroadcastTo Cbrt Ceil Clip Concatenate Conj
        Conjugate Copy Corrcoef Correlate Cos Cosh CountNonzero Cross Cumprod Cumsum Deg2rad
        Diag Diagflat Diagonal Diff Digitize Divide DivideNoNan Dot Dsplit Dstack Einsum
        EmptyLike Equal Exp Exp2 ExpandDims Expm1 Fabs Flip Fliplr Flipud Floor FloorDivide
        Fmax Fmin Fmod Full FullLike Gcd Geomspace GetItem Greater GreaterEqual Heaviside
        Histogram Hsplit Hstack Hypot I0 Imag Inner IsIn Isclose Isfinite Isinf Isnan
        Isneginf Isposinf Isreal Kron Lcm Ldexp LeftShift Less LessEqual Linspace Log Log10
        Log1p Log2 Logaddexp Logaddexp2 LogicalAnd LogicalNot LogicalOr LogicalXor Logspace
        Matmul Max Maximum Mean Median Meshgrid Min Minimum Mod Moveaxis Multiply NanToNum
        Nanargmax Nanargmin Nancumprod Nancumsum Nanmax Nanmean Nanmedian Nanmin
        Nanpercentile Nanprod Nanquantile Nanstd Nansum Nanvar Ndim Negative Nextafter
        Nonzero NotEqual OnesLike Outer Pad Percentile Power Prod Ptp Quantile Rad2deg Ravel
        Real Reciprocal Repeat Reshape RightShift Roll Rot90 Round SearchSorted Select Sign
        Signbit Sin Sinc Sinh Size Slogdet Sort Split Sqrt Square Squeeze Stack Std Subtract
        Sum Swapaxes Take TakeAlongAxis Tan Tanh Tensordot Tile Trace Transpose Trapezoid
        Tril Triu TrueDivide Trunc Unique UnravelIndex Vander Var Vdot View Vsplit Vstack
        Where ZerosLike
    """),
    "keras.src.ops.math": _names("""
        CDist Erf Erfc Erfinv ExtractSequences FFT FFT2 IFFT2 IRFFT ISTFT InTopK Logdet
        Logsumexp RFFT Rsqrt STFT SegmentMax SegmentMin SegmentProd SegmentSum TopK
        ViewAsComplex ViewAsReal
    """),
    "keras.src.ops.nn": _names("""
        AdaptiveAveragePool AdaptiveMaxPool AveragePool BatchNorm BinaryCrossentropy
        CTCDecode CTCLoss CategoricalCrossentropy Celu Conv ConvTranspose DepthToSpace
        DepthwiseConv DotProductAttention Elu Fold Gelu Glu HardShrink HardSigmoid HardSilu
        HardTanh LayerNorm LeakyRelu LogSigmoid LogSoftmax MaxPool Moments MultiHot
        Normalize OneHot PSNR Polar RMSNorm Relu Relu6 Selu SeparableConv Sigmoid Silu
        SoftShrink Softmax Softplus Softsign SpaceToDepth SparseCategoricalCrossentropy
        SparsePlus SparseSigmoid Sparsemax Squareplus TanhShrink Threshold Unfold
    """),
    "keras.src.ops.core": _names("""
        Cast ConvertToTensor SaturateCast Scatter ScatterUpdate Slice SliceUpdate
        StopGradient Unstack
    """),
    "keras.src.ops.linalg": _names("""
        Cholesky CholeskyInverse Det Eig Eigh Inv Lstsq LuFactor MatrixRank Norm Pinv Qr SVD
        Solve SolveTriangular
    """),
    "keras.src.ops.image": _names("""
        AffineTransform CropImages ElasticTransform ExtractPatches GaussianBlur HSVToRGB
        MapCoordinates PadImages PerspectiveTransform RGBToGrayscale RGBToHSV Resize SSIM
        ScaleAndTranslate SobelEdges
    """),
}

#: TensorFlow graph ops a SavedModel's functions and initializers may hold: the ops of
#: TensorFlow's math, nn, array, linalg, image, spectral, bitwise, random, special-math,
#: resource-variable, list, ctc, ragged, sparse, set, string, functional, control-flow and
#: state modules, TensorArray and DynamicStitch, and the in-memory lookup tables. Left out:
#: every file, reader, queue, summary, print, Python (PyFunc, EagerPyFunc), RPC
#: (RemoteCall), debug and collective op, ImmutableConst (maps a file), Abort,
#: InitializeTableFromTextFile (reads one), mutexes and the sparse tensor maps.
GRAPH_OPS = _names("""
    Abs AccumulateNV2 Acos Acosh Add AddN AddV2 AdjustContrast AdjustContrastv2 AdjustHue
    AdjustSaturation All Angle AnonymousHashTable AnonymousMutableDenseHashTable
    AnonymousMutableHashTable AnonymousMutableHashTableOfTensors Any ApproxTopK ApproximateEqual
    ArgMax ArgMin AsString Asin Asinh Assert Assign AssignAdd AssignAddVariableOp AssignSub
    AssignSubVariableOp AssignVariableOp Atan Atan2 Atanh AvgPool AvgPool3D AvgPool3DGrad
    AvgPoolGrad BandedTriangularSolve BatchCholesky BatchCholeskyGrad BatchFFT BatchFFT2D
    BatchFFT3D BatchIFFT BatchIFFT2D BatchIFFT3D BatchMatMul BatchMatMulV2 BatchMatMulV3
    BatchMatrixBandPart BatchMatrixDeterminant BatchMatrixDiag BatchMatrixDiagPart
    BatchMatrixInverse BatchMatrixSetDiag BatchMatrixSolve BatchMatrixSolveLs
    BatchMatrixTriangularSolve BatchNormWithGlobalNormalization
    BatchNormWithGlobalNormalizationGrad BatchSelfAdjointEig BatchSelfAdjointEigV2 BatchSvd
    BatchToSpace BatchToSpaceND BesselI0 BesselI0e BesselI1 BesselI1e BesselJ0 BesselJ1 BesselK0
    BesselK0e BesselK1 BesselK1e BesselY0 BesselY1 Betainc BiasAdd BiasAddGrad BiasAddV1
    Bincount Bitcast BitwiseAnd BitwiseOr BitwiseXor BroadcastArgs BroadcastGradientArgs
    BroadcastTo Bucketize CTCBeamSearchDecoder CTCGreedyDecoder CTCLoss CTCLossV2 Case Cast Ceil
    CheckNumerics CheckNumericsV2 Cholesky CholeskyGrad ClipByValue CombinedNonMaxSuppression
    Complex ComplexAbs Concat ConcatOffset ConcatV2 Conj ConjugateTranspose Const ControlTrigger
    Conv Conv2D Conv2DBackpropFilter Conv2DBackpropFilterV2 Conv2DBackpropInput
    Conv2DBackpropInputV2 Conv3D Conv3DBackpropFilter Conv3DBackpropFilterV2 Conv3DBackpropInput
    Conv3DBackpropInputV2 Cos Cosh CountUpTo CropAndResize CropAndResizeGradBoxes
    CropAndResizeGradImage Cross Cumprod Cumsum CumulativeLogsumexp DataFormatDimMap
    DataFormatVecPermute Dawsn DebugGradientIdentity DebugGradientRefIdentity DecodeAndCropJpeg
    DecodeBase64 DecodeBmp DecodeGif DecodeImage DecodeJpeg DecodeJxl DecodePng DecodeWebP
    DeepCopy DenseBincount DenseCountSparseOutput DenseToDenseSetOperation
    DenseToSparseSetOperation DepthToSpace DepthwiseConv2dNative
    DepthwiseConv2dNativeBackpropFilter DepthwiseConv2dNativeBackpropInput Dequantize
    DeserializeManySparse DeserializeSparse DestroyResourceOp DestroyTemporaryVariable
    DeviceIndex Diag DiagPart Digamma Dilation2D Dilation2DBackpropFilter
    Dilation2DBackpropInput DisableCopyOnRead Div DivNoNan DrawBoundingBoxes DrawBoundingBoxesV2
    DynamicPartition DynamicStitch EditDistance Eig Einsum Elu EluGrad Empty EmptyTensorList
    EncodeBase64 EncodeJpeg EncodeJpegVariableQuality EncodePng EnsureShape Enter Equal Erf Erfc
    Erfinv EuclideanNorm Exit Exp ExpandDims Expint Expm1 ExtractGlimpse ExtractGlimpseV2
    ExtractImagePatches ExtractJpegShape ExtractVolumePatches FFT FFT2D FFT3D FFTND FakeParam
    FakeQuantWithMinMaxArgs FakeQuantWithMinMaxArgsGradient FakeQuantWithMinMaxVars
    FakeQuantWithMinMaxVarsGradient FakeQuantWithMinMaxVarsPerChannel
    FakeQuantWithMinMaxVarsPerChannelGradient Fill Fingerprint Floor FloorDiv FloorMod For
    FractionalAvgPool FractionalAvgPoolGrad FractionalMaxPool FractionalMaxPoolGrad FresnelCos
    FresnelSin FusedBatchNorm FusedBatchNormGrad FusedBatchNormGradV2 FusedBatchNormGradV3
    FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D Gather GatherNd
    GatherV2 GenerateBoundingBoxProposals Greater GreaterEqual GuaranteeConst HSVToRGB HashTable
    HashTableV2 HistogramFixedWidth IFFT IFFT2D IFFT3D IFFTND IRFFT IRFFT2D IRFFT3D IRFFTND
    Identity IdentityN If Igamma IgammaGradA Igammac Imag ImageProjectiveTransformV2
    ImageProjectiveTransformV3 InTopK InTopKV2 InitializeTable InitializeTableV2 InplaceAdd
    InplaceSub InplaceUpdate Inv InvGrad Invert InvertPermutation IsFinite IsInf IsNan
    IsVariableInitialized IsotonicRegression L2Loss LRN LRNGrad LeakyRelu LeakyReluGrad
    LeftShift Less LessEqual Lgamma LinSpace ListDiff Log Log1p LogMatrixDeterminant LogSoftmax
    LogicalAnd LogicalNot LogicalOr LookupTableExport LookupTableExportV2 LookupTableFind
    LookupTableFindV2 LookupTableImport LookupTableImportV2 LookupTableInsert
    LookupTableInsertV2 LookupTableRemoveV2 LookupTableSize LookupTableSizeV2 LoopCond
    LowerBound Lu MatMul MatrixBandPart MatrixDeterminant MatrixDiag MatrixDiagPart
    MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3 MatrixExponential MatrixInverse
    MatrixLogarithm MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 MatrixSolve MatrixSolveLs
    MatrixSquareRoot MatrixTriangularSolve Max MaxPool MaxPool3D MaxPool3DGrad MaxPool3DGradGrad
    MaxPoolGrad MaxPoolGradGrad MaxPoolGradGradV2 MaxPoolGradGradWithArgmax MaxPoolGradV2
    MaxPoolGradWithArgmax MaxPoolV2 MaxPoolWithArgmax Maximum Mean Merge Min Minimum MirrorPad
    MirrorPadGrad Mod Mul MulNoNan Multinomial MutableDenseHashTable MutableDenseHashTableV2
    MutableHashTable MutableHashTableOfTensors MutableHashTableOfTensorsV2 MutableHashTableV2
    Ndtri Neg NextAfter NextIteration NoOp NonDeterministicInts NonMaxSuppression
    NonMaxSuppressionV2 NonMaxSuppressionV3 NonMaxSuppressionV4 NonMaxSuppressionV5
    NonMaxSuppressionWithOverlaps NotEqual NthElement OneHot OnesLike Pack Pad PadV2
    ParallelConcat ParallelDynamicStitch ParameterizedTruncatedNormal PartitionedCall
    Placeholder PlaceholderV2 PlaceholderWithDefault Polygamma PopulationCount Pow
    PreventGradient Prod Qr QuantizeAndDequantize QuantizeAndDequantizeV2
    QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 QuantizeAndDequantizeV4Grad
    QuantizeDownAndShrinkRange QuantizeV2 QuantizedAdd QuantizedAvgPool
    QuantizedBatchNormWithGlobalNormalization QuantizedBiasAdd QuantizedConcat QuantizedConv2D
    QuantizedConv2DAndRelu QuantizedConv2DAndReluAndRequantize QuantizedConv2DAndRequantize
    QuantizedConv2DPerChannel QuantizedConv2DWithBias QuantizedConv2DWithBiasAndRelu
    QuantizedConv2DWithBiasAndReluAndRequantize QuantizedConv2DWithBiasAndRequantize
    QuantizedConv2DWithBiasSignedSumAndReluAndRequantize QuantizedConv2DWithBiasSumAndRelu
    QuantizedConv2DWithBiasSumAndReluAndRequantize QuantizedDepthwiseConv2D
    QuantizedDepthwiseConv2DWithBias QuantizedDepthwiseConv2DWithBiasAndRelu
    QuantizedDepthwiseConv2DWithBiasAndReluAndRequantize QuantizedInstanceNorm QuantizedMatMul
    QuantizedMatMulWithBias QuantizedMatMulWithBiasAndDequantize QuantizedMatMulWithBiasAndRelu
    QuantizedMatMulWithBiasAndReluAndRequantize QuantizedMatMulWithBiasAndRequantize
    QuantizedMaxPool QuantizedMul QuantizedRelu QuantizedRelu6 QuantizedReluX QuantizedReshape
    QuantizedResizeBilinear RFFT RFFT2D RFFT3D RFFTND RGBToHSV RaggedBincount
    RaggedCountSparseOutput RaggedCross RaggedFillEmptyRows RaggedFillEmptyRowsGrad RaggedGather
    RaggedRange RaggedTensorFromVariant RaggedTensorToSparse RaggedTensorToTensor
    RaggedTensorToVariant RaggedTensorToVariantGradient RandomCrop RandomGamma RandomGammaGrad
    RandomIndexShuffle RandomPoisson RandomPoissonV2 RandomShuffle RandomStandardNormal
    RandomUniform RandomUniformInt Range Rank ReadVariableOp Real RealDiv Reciprocal
    ReciprocalGrad ReduceJoin RefEnter RefExit RefIdentity RefMerge RefNextIteration RefSelect
    RefSwitch RegexFullMatch RegexReplace Relu Relu6 Relu6Grad ReluGrad RequantizationRange
    RequantizationRangePerChannel Requantize RequantizePerChannel Reshape ResizeArea
    ResizeBicubic ResizeBicubicGrad ResizeBilinear ResizeBilinearGrad ResizeNearestNeighbor
    ResizeNearestNeighborGrad ResourceCountUpTo ResourceGather ResourceGatherNd
    ResourceScatterAdd ResourceScatterDiv ResourceScatterMax ResourceScatterMin
    ResourceScatterMul ResourceScatterNdAdd ResourceScatterNdMax ResourceScatterNdMin
    ResourceScatterNdSub ResourceScatterNdUpdate ResourceScatterSub ResourceScatterUpdate
    ResourceStridedSliceAssign Reverse ReverseSequence ReverseV2 RightShift Rint RngReadAndSkip
    RngSkip Roll Round Rsqrt RsqrtGrad SampleDistortedBoundingBox SampleDistortedBoundingBoxV2
    ScaleAndTranslate ScaleAndTranslateGrad ScatterAdd ScatterDiv ScatterMax ScatterMin
    ScatterMul ScatterNd ScatterNdAdd ScatterNdMax ScatterNdMin ScatterNdNonAliasingAdd
    ScatterNdSub ScatterNdUpdate ScatterSub ScatterUpdate SegmentMax SegmentMaxV2 SegmentMean
    SegmentMin SegmentMinV2 SegmentProd SegmentProdV2 SegmentSum SegmentSumV2 Select SelectV2
    SelfAdjointEig SelfAdjointEigV2 Selu SeluGrad SerializeManySparse SerializeSparse SetSize
    Shape ShapeN Sigmoid SigmoidGrad Sign Sin Sinh Size Slice Snapshot SobolSample Softmax
    SoftmaxCrossEntropyWithLogits Softplus SoftplusGrad Softsign SoftsignGrad SpaceToBatch
    SpaceToBatchND SpaceToDepth SparseAdd SparseAddGrad SparseBincount SparseConcat
    SparseCountSparseOutput SparseCross SparseCrossHashed SparseCrossV2 SparseDenseCwiseAdd
    SparseDenseCwiseDiv SparseDenseCwiseMul SparseFillEmptyRows SparseFillEmptyRowsGrad
    SparseMatMul SparseReduceMax SparseReduceMaxSparse SparseReduceSum SparseReduceSumSparse
    SparseReorder SparseReshape SparseSegmentMean SparseSegmentMeanGrad SparseSegmentMeanGradV2
    SparseSegmentMeanWithNumSegments SparseSegmentSqrtN SparseSegmentSqrtNGrad
    SparseSegmentSqrtNGradV2 SparseSegmentSqrtNWithNumSegments SparseSegmentSum
    SparseSegmentSumGrad SparseSegmentSumGradV2 SparseSegmentSumWithNumSegments SparseSlice
    SparseSliceGrad SparseSoftmax SparseSoftmaxCrossEntropyWithLogits SparseSparseMaximum
    SparseSparseMinimum SparseSplit SparseTensorDenseAdd SparseTensorDenseMatMul SparseToDense
    SparseToSparseSetOperation Spence Split SplitV Sqrt SqrtGrad Square SquaredDifference
    Squeeze StatefulPartitionedCall StatefulRandomBinomial StatefulStandardNormal
    StatefulStandardNormalV2 StatefulTruncatedNormal StatefulUniform StatefulUniformFullInt
    StatefulUniformInt StatelessCase StatelessIf StatelessMultinomial
    StatelessParameterizedTruncatedNormal StatelessRandomBinomial StatelessRandomGammaV2
    StatelessRandomNormal StatelessRandomPoisson StatelessRandomUniform
    StatelessRandomUniformFullInt StatelessRandomUniformInt StatelessSampleDistortedBoundingBox
    StatelessTruncatedNormal StatelessWhile StaticRegexFullMatch StaticRegexReplace StopGradient
    StridedSlice StridedSliceAssign StridedSliceGrad StringFormat StringJoin StringLength
    StringLower StringNGrams StringSplit StringSplitV2 StringStrip StringToHashBucket
    StringToHashBucketFast StringToHashBucketStrong StringUpper Sub Substr Sum Svd Switch
    SymbolicGradient Tan Tanh TanhGrad TemporaryVariable TensorArray TensorArrayClose
    TensorArrayCloseV2 TensorArrayCloseV3 TensorArrayConcat TensorArrayConcatV2
    TensorArrayConcatV3 TensorArrayGather TensorArrayGatherV2 TensorArrayGatherV3
    TensorArrayGrad TensorArrayGradV2 TensorArrayGradV3 TensorArrayGradWithShape TensorArrayPack
    TensorArrayRead TensorArrayReadV2 TensorArrayReadV3 TensorArrayScatter TensorArrayScatterV2
    TensorArrayScatterV3 TensorArraySize TensorArraySizeV2 TensorArraySizeV3 TensorArraySplit
    TensorArraySplitV2 TensorArraySplitV3 TensorArrayUnpack TensorArrayV2 TensorArrayV3
    TensorArrayWrite TensorArrayWriteV2 TensorArrayWriteV3 TensorListConcat
    TensorListConcatLists TensorListConcatV2 TensorListElementShape TensorListFromTensor
    TensorListGather TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack
    TensorListPushBackBatch TensorListReserve TensorListResize TensorListScatter
    TensorListScatterIntoExistingList TensorListScatterV2 TensorListSetItem TensorListSplit
    TensorListStack TensorScatterAdd TensorScatterMax TensorScatterMin TensorScatterSub
    TensorScatterUpdate TensorStridedSliceUpdate Tile TileGrad Timestamp ToBool TopK TopKV2
    Transpose TridiagonalMatMul TridiagonalSolve TruncateDiv TruncateMod TruncatedNormal
    UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode UnicodeScript UnicodeTranscode
    UniformDequantize UniformQuantize UniformQuantizedAdd UniformQuantizedClipByValue
    UniformQuantizedConvolution UniformQuantizedConvolutionHybrid UniformQuantizedDot
    UniformQuantizedDotHybrid UniformRequantize Unique UniqueV2 UniqueWithCounts
    UniqueWithCountsV2 Unpack UnravelIndex UnsortedSegmentJoin UnsortedSegmentMax
    UnsortedSegmentMin UnsortedSegmentProd UnsortedSegmentSum UpperBound VarHandleOp
    VarIsInitializedOp Variable VariableShape VariableV2 Where While Xdivy Xlog1py Xlogy
    ZerosLike Zeta
""")


#: Ops of the saver functions a SavedModel carries (they read and write its own
#: `variables/`); allowed only in functions that nothing but the saver calls.
SAVER_OPS = _names("SaveV2 RestoreV2 MergeV2Checkpoints ShardedFilename ShardedFilespec")


#: Packages of Keras models whose refusal suggests `--import PACKAGE` by name (when it is
#: installed): the file names the module, so any other package, even one on the path,
#: could be the file's own code placed there; those get the general refusal.
MODEL_PACKAGES = _names("keras_hub keras_cv keras_nlp keras_rs")
