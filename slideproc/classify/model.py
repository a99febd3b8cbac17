"""Build the InceptionResNetV2 classifier and resolve its initial weights.

Model graph: uint8 crop -> CropPreprocess -> InceptionResNetV2 backbone (no top)
-> global average pooling -> dropout -> dense softmax over the labels. The
backbone is a nested model named ``backbone`` so training can freeze it in one
step and fine-tuning can copy it between models of different input sizes
(convolution weights do not depend on the input size).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..backend_noise import import_keras

import_keras()  # the first keras import anywhere: without TensorFlow's start-up lines on stderr
import keras  # noqa: E402

from ..errors import ModelError
from .preprocess import CropPreprocess

log = logging.getLogger("slideproc.classify")

IMAGENET_NOTOP_FILE = "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
BACKBONE = "backbone"
HEAD = "classes"


@dataclass(frozen=True)
class WeightsSource:
    """Where the initial weights come from; ``describe`` goes into logs and metrics.json."""

    kind: str  # "none" | "imagenet" | "h5" | "model_dir"
    path: Path | None = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if self.kind == "none":
            return "none (random initialisation, trained from scratch; not pretrained)"
        if self.kind == "imagenet":
            return f"imagenet (Keras InceptionResNetV2 notop weights from {self.path})"
        if self.kind == "h5":
            return f"local notop weights file {self.path}"
        return f"slideproc model {self.path} (fine-tuned from it)"


def imagenet_cache_path() -> Path:
    """Where keras.utils.get_file keeps the ImageNet notop weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models" / IMAGENET_NOTOP_FILE


def resolve_weights(spec: str) -> WeightsSource:
    """imagenet | none | PATH -> WeightsSource; refuses what cannot be used offline."""
    text = spec.strip()
    if text.lower() == "none":
        return WeightsSource("none")
    if text.lower() == "imagenet":
        path = imagenet_cache_path()
        # This machine may have no internet: use the cache or say how to fill it.
        if not path.is_file():
            raise ModelError(
                f"ImageNet weights are not in the Keras cache ({path}); copy "
                f"{IMAGENET_NOTOP_FILE} there, or use --weights PATH or --weights none"
            )
        return WeightsSource("imagenet", path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model.keras").is_file():
            raise ModelError(f"--weights {path}: a directory must be a slideproc model (no model.keras in it)")
        return WeightsSource("model_dir", path)
    if path.is_file():
        if path.suffix.lower() not in (".h5", ".hdf5"):
            raise ModelError(f"--weights {path}: expected a notop .h5 weights file or a model directory")
        return WeightsSource("h5", path)
    raise ModelError(f"--weights {text}: not imagenet, none, or an existing file or directory")


def build_classifier(n_classes: int, input_size_px: int, *, dropout: float = 0.3,
                     bn_momentum: float | None = None, weights_path: Path | None = None) -> keras.Model:
    """The classifier, randomly initialised unless ``weights_path`` (a notop .h5) is given.

    Built under the current global dtype policy; the softmax stays float32 so
    mixed precision never rounds probabilities.
    """
    if input_size_px < 75:
        raise ModelError(f"input size {input_size_px} px is below InceptionResNetV2's minimum of 75 px")
    backbone = keras.applications.InceptionResNetV2(
        include_top=False, weights=None, input_shape=(input_size_px, input_size_px, 3), name=BACKBONE)
    if weights_path is not None:
        try:
            backbone.load_weights(str(weights_path))
        except Exception as err:  # h5py/Keras raise several types for a wrong file
            raise ModelError(
                f"cannot load notop InceptionResNetV2 weights from {weights_path}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum

    inputs = keras.Input((input_size_px, input_size_px, 3), dtype="uint8", name="crops")
    x = CropPreprocess(input_size_px, name="preprocess")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name=HEAD)(x)
    return keras.Model(inputs, outputs, name="slideproc_inception_resnet_v2")


def copy_weights(source: keras.Model, target: keras.Model, *, head: bool) -> None:
    """Backbone (and, when the label lists match, head) weights from source to target."""
    target.get_layer(BACKBONE).set_weights(source.get_layer(BACKBONE).get_weights())
    if head:
        target.get_layer(HEAD).set_weights(source.get_layer(HEAD).get_weights())


def initial_model(labels: list[str], input_size_px: int, weights: WeightsSource, *,
                  dropout: float, bn_momentum: float | None) -> keras.Model:
    """The model training starts from, with ``weights`` applied."""
    h5 = weights.path if weights.kind in ("imagenet", "h5") else None
    model = build_classifier(len(labels), input_size_px, dropout=dropout,
                             bn_momentum=bn_momentum, weights_path=h5)
    if weights.kind == "model_dir":
        from .loading import load_model_dir

        source = load_model_dir(weights.path)
        same = list(source.labels) == list(labels)
        copy_weights(source.model, model, head=same)
        log.info("fine-tuning from %s (%s)", weights.path,
                 "backbone and head" if same else "backbone only: its labels differ")
    log.info("initial weights: %s", weights.describe())
    return model
