"""Crop -> model input: the one preprocessing step of training and inference.

The step lives inside the model as the layer :class:`CropPreprocess`, so a
saved ``model.keras`` carries it and nobody can feed a model differently from
how it was trained. Inputs are uint8 RGB crops; InceptionResNetV2 expects
values in [-1, 1] (its "tf" mode, the ImageNet weights' convention).

:func:`resize_crops` brings crops of another size to the model input with one
resampling routine (PIL bilinear, antialiased when shrinking); the training
pipeline and :class:`~slideproc.classify.predict.Predictor` both call it.
"""

from __future__ import annotations

from ..backend_noise import import_keras

import_keras()  # the first keras import anywhere: without TensorFlow's start-up lines on stderr
import keras  # noqa: E402
import numpy as np
from keras import ops
from PIL import Image


@keras.saving.register_keras_serializable(package="slideproc")
class CropPreprocess(keras.layers.Layer):
    """uint8 RGB (N, H, W, 3) -> float (N, S, S, 3) in [-1, 1]."""

    def __init__(self, size_px: int, **kwargs):
        super().__init__(**kwargs)
        self.size_px = int(size_px)

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        shape = inputs.shape
        # Resize in the graph only when a caller bypasses resize_crops; the
        # shape is static, so this costs nothing for the usual input.
        if shape[1] != self.size_px or shape[2] != self.size_px:
            x = ops.image.resize(x, (self.size_px, self.size_px), interpolation="bilinear",
                                 antialias=True)
        return x / 127.5 - 1.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size_px, self.size_px, 3)

    def get_config(self):
        return {**super().get_config(), "size_px": self.size_px}


def resize_crop(image: np.ndarray, size_px: int) -> np.ndarray:
    """One uint8 RGB crop resized to size_px x size_px (unchanged if already so)."""
    if image.shape[0] == size_px and image.shape[1] == size_px:
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((size_px, size_px), Image.BILINEAR, reducing_gap=None))


def resize_crops(crops: np.ndarray, size_px: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, size_px, size_px, 3)."""
    if crops.shape[1] == size_px and crops.shape[2] == size_px:
        return crops
    out = np.empty((len(crops), size_px, size_px, 3), np.uint8)
    for i, crop in enumerate(crops):
        out[i] = resize_crop(crop, size_px)
    return out
