"""The model ``fedge export`` is given: a factory, a saved Keras file or a SavedModel.

- ``path/to/file.py:factory`` imports the file and calls ``factory()``;
- ``path/to/model.keras`` (or a legacy ``.h5``) loads with
  ``keras.models.load_model``, compiled, so its optimizer and loss apply;
- a SavedModel directory written by Keras 2 (``model.save("dir")`` in
  TensorFlow ≤ 2.15, or tf_keras) is loaded with tf_keras and rebuilt as a
  Keras 3 model with the same weights and compile settings. A SavedModel
  written by ``model.export()`` or ``tf.saved_model.save`` holds only a traced
  graph, no layers, and is refused with what to do instead.

Every failure is an :class:`InvalidOptionError` or
:class:`UnsupportedModelError` with one line saying what to change.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

from model_export.errors import InvalidOptionError, UnsupportedModelError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def is_model_path(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in KERAS_SUFFIXES or path.is_dir()


def default_name(spec: str) -> str:
    """A model name from where the model came from: the file's stem or the factory's name."""
    if ":" in spec and not Path(spec).exists():
        return spec.rpartition(":")[2]
    path = Path(spec)
    return (path.stem if path.suffix else path.name) or "model"


def load(spec: str) -> Any:
    if is_model_path(spec):
        path = Path(spec)
        if path.is_dir():
            return load_saved_model(path)
        return load_keras_file(path)
    return load_factory(spec)


def _check_model(spec: str, model: Any, what: str) -> Any:
    if not hasattr(model, "layers") or not hasattr(model, "inputs"):
        raise UnsupportedModelError(
            f"{spec!r}: {what} {type(model).__name__}, expected a Keras model"
        )
    return model


def load_factory(spec: str) -> Any:
    """``path/to/file.py:function`` → the Keras model the function returns."""
    from model_export.reference import REFERENCE_MODELS

    path_text, _, attr = spec.rpartition(":")
    if not path_text or not attr:
        raise InvalidOptionError(
            f"{spec!r} is neither a reference model ({', '.join(REFERENCE_MODELS)}), "
            "path/to/file.py:factory, a .keras file nor a SavedModel directory"
        )
    path = Path(path_text)
    if not path.is_file() or path.suffix != ".py":
        raise InvalidOptionError(f"{spec!r}: {path} is not a Python file")
    module_spec = importlib.util.spec_from_file_location(f"fedge_user_model_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidOptionError(f"{spec!r}: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report its error, not a traceback
        raise InvalidOptionError(
            f"{spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidOptionError(f"{spec!r}: {path} has no function {attr!r}")
    try:
        model = factory()
    except Exception as exc:
        raise InvalidOptionError(f"{spec!r}: {attr}() raised {type(exc).__name__}: {exc}") from exc
    return _check_model(spec, model, f"{attr}() returned")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def load_keras_file(path: Path) -> Any:
    if not path.is_file():
        raise InvalidOptionError(f"{path}: no such file")
    import keras

    import model_export.keras_layers  # noqa: F401  (registers fedge's own layers)

    try:
        model = keras.models.load_model(path, compile=True)
    except Exception as exc:  # a damaged file, a custom layer Keras cannot find …
        raise InvalidOptionError(
            f"{path}: keras.models.load_model failed ({_one_line(exc)}); a model with custom "
            "layers must be exported through a factory (file.py:function) that imports them"
        ) from exc
    return _check_model(str(path), model, "the file holds")


def load_saved_model(path: Path) -> Any:
    if not (path / "saved_model.pb").is_file():
        raise InvalidOptionError(
            f"{path} is a directory but not a SavedModel (no saved_model.pb); pass a "
            ".keras file, a SavedModel directory or path/to/file.py:factory"
        )
    if not (path / "keras_metadata.pb").is_file():
        raise UnsupportedModelError(
            f"{path} is a SavedModel without Keras layers (written by model.export() or "
            "tf.saved_model.save: only a traced graph); fedge needs the layers: save the model "
            "with model.save('model.keras') and export that file"
        )
    if importlib.util.find_spec("tf_keras") is None:
        raise InvalidOptionError(
            f"{path} is a Keras 2 SavedModel; reading it needs tf_keras: pip install "
            "'tf-keras>=2.21,<2.22' (or save the model as .keras)"
        )
    import tf_keras

    try:
        legacy = tf_keras.models.load_model(str(path))
    except Exception as exc:
        raise InvalidOptionError(f"{path}: loading the SavedModel failed ({_one_line(exc)})"
                                 ) from exc
    return from_keras2(legacy, str(path))


def _clean(layer_config: dict[str, Any], cls: type) -> dict[str, Any]:
    """Drop Keras 2 arguments a Keras 3 layer no longer takes (GRU's time_major …)."""
    import keras

    accepted: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            params = inspect.signature(klass).parameters
        except (TypeError, ValueError):
            continue
        accepted |= {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
        if klass is keras.layers.Layer:
            break
    accepted |= {"name", "trainable", "dtype", "batch_input_shape", "batch_shape",
                 "input_shape"}
    return {k: v for k, v in layer_config.items() if k in accepted}


def from_keras2(legacy: Any, spec: str) -> Any:
    """A Keras 2 (tf_keras) model → the same Keras 3 model: config cleaned of
    arguments Keras 3 dropped, weights copied layer by layer, compiled alike."""
    import keras

    config = legacy.get_config()

    def rebuild(cfg: dict[str, Any]) -> Any:
        for layer in cfg.get("layers", []):
            inner = layer.get("config", {})
            name = layer["class_name"]
            klass = getattr(keras.layers, name, None) or getattr(keras, name, None)
            if klass is None:
                raise UnsupportedModelError(
                    f"{spec!r}: layer class {name!r} has no Keras 3 equivalent; export a "
                    "factory (file.py:function) that builds the model in Keras 3"
                )
            if isinstance(klass, type) and issubclass(klass, keras.Model):
                rebuild(inner)
                continue
            if "layer" in inner and isinstance(inner["layer"], dict):  # wrappers
                sub = inner["layer"]
                sub_cls = getattr(keras.layers, sub["class_name"], None)
                if sub_cls is not None:
                    sub["config"] = _clean(sub["config"], sub_cls)
            layer["config"] = _clean(inner, klass)
            if "batch_input_shape" in layer["config"]:
                layer["config"]["batch_shape"] = layer["config"].pop("batch_input_shape")
        return cfg

    try:
        if type(legacy).__name__ == "Sequential":
            model = keras.Sequential.from_config(rebuild(config))
        else:
            model = keras.Model.from_config(rebuild(config))
        model.set_weights(legacy.get_weights())
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"{spec!r}: rebuilding the Keras 2 model in Keras 3 failed ({_one_line(exc)}); "
            "save it as .keras with tf_keras' model.save('model.keras') or export a factory"
        ) from exc
    optimizer = getattr(legacy, "optimizer", None)
    if optimizer is not None and getattr(legacy, "loss", None) is not None:
        opt_config = optimizer.get_config()
        klass = getattr(keras.optimizers, type(optimizer).__name__, None)
        if klass is None:
            raise UnsupportedModelError(
                f"{spec!r}: the Keras 2 optimizer {type(optimizer).__name__} has no Keras 3 "
                "equivalent; pass --optimizer to choose one"
            )
        accepted = set(inspect.signature(klass.__init__).parameters)
        kwargs = {k: (v.item() if hasattr(v, "item") else v)  # NumPy scalars → Python
                  for k, v in opt_config.items() if k in accepted}
        model.compile(optimizer=klass(**kwargs), loss=legacy.loss)
    return model
