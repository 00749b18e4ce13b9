"""The model zoo's Keras architectures: keras.applications (Keras 3 on tensorflow-cpu),
random seeded weights, written as a user brings them to kiln.

Each application is built with `weights=None` at a small input size (96x96, which every
application below accepts without pretrained weights) after `keras.utils.set_random_seed`,
returning logits (`classifier_activation=None`: a softmax over 1,000 classes gives outputs
near 1e-3, which a tolerance of 1e-4 barely tells apart). Freshly initialised, MobileNetV2,
MobileNetV3 and EfficientNet give logits of 1e-8 to 1e-11 (their activations vanish through
the layers), which any module would match: so each BatchNormalization's moving mean and
variance are set, layer by layer, to the statistics of its input on seeded images (as
training would leave them), which keeps activations of order one (logits' std 0.25 to 5).
It is written four ways:
- `keras_<app>_savedmodel`: `model.export(dir)`, Keras 3's SavedModel with one
  'serving_default' signature (kiln's TF adapter takes the only signature);
- `keras_<app>_tflite`: float TFLite, TFLiteConverter.from_keras_model;
- `keras_<app>_tflite_dynamic`: dynamic-range quantized (int8 weights, float activations);
- `keras_<app>_tflite_int8`: full-integer int8 (int8 inputs and outputs), calibrated on
  seeded standard-normal images.

MODELS maps each name to a builder: builder(folder) writes the model into folder and returns
its path (benchmarks/zoo/build.py runs each in a process of its own)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

SEED = 0
SIZE = 96              # the smallest side every application here takes with weights=None
CALIBRATION_IMAGES = 8

# name in the zoo -> keras.applications class name
APPS = {
    "mobilenetv2": "MobileNetV2",
    "mobilenetv3small": "MobileNetV3Small",
    "resnet50": "ResNet50",
    "efficientnetb0": "EfficientNetB0",
    "densenet121": "DenseNet121",
    "convnexttiny": "ConvNeXtTiny",
}


def _keras():
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    return keras


def _application(app: str):
    """The application with fresh seeded weights (same seed, same weights), its batch
    normalizations calibrated."""
    keras = _keras()
    keras.utils.set_random_seed(SEED)
    model = getattr(keras.applications, APPS[app])(weights=None, input_shape=(SIZE, SIZE, 3),
                                                   classifier_activation=None)
    _calibrate_batch_norms(model)
    return model


def _calibrate_batch_norms(model) -> None:
    """Each BatchNormalization's moving statistics := its input's mean and variance per
    channel on seeded images, in layer order (each sees the ones before it calibrated)."""
    import numpy as np
    keras = _keras()
    images = np.random.default_rng(SEED + 1).standard_normal((4, SIZE, SIZE, 3)).astype(np.float32)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        seen = np.asarray(keras.Model(model.input, layer.input)(images))
        axis = (layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis) % seen.ndim
        others = tuple(i for i in range(seen.ndim) if i != axis)
        layer.moving_mean.assign(seen.mean(axis=others))
        layer.moving_variance.assign(seen.var(axis=others))


def savedmodel(app: str, folder: Path) -> Path:
    out = folder / f"{app}_saved_model"
    _application(app).export(str(out), format="tf_saved_model", verbose=False)
    return out


def _calibration():
    import numpy as np
    rng = np.random.default_rng(SEED)
    for _ in range(CALIBRATION_IMAGES):
        yield [rng.standard_normal((1, SIZE, SIZE, 3)).astype(np.float32)]


def tflite(app: str, kind: str, folder: Path) -> Path:
    """kind: float, dynamic (dynamic-range) or int8 (full-integer, int8 edges)."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(_application(app))
    if kind != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "int8":
        converter.representative_dataset = _calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    out = folder / (f"{app}.tflite" if kind == "float" else f"{app}_{kind}.tflite")
    out.write_bytes(converter.convert())
    return out


def _entries() -> dict[str, Callable[[Path], Path]]:
    models: dict[str, Callable[[Path], Path]] = {}
    for app in APPS:
        models[f"keras_{app}_savedmodel"] = functools.partial(savedmodel, app)
        models[f"keras_{app}_tflite"] = functools.partial(tflite, app, "float")
        models[f"keras_{app}_tflite_dynamic"] = functools.partial(tflite, app, "dynamic")
        models[f"keras_{app}_tflite_int8"] = functools.partial(tflite, app, "int8")
    return models


MODELS = _entries()
