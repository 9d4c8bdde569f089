"""The model_export exception tree (see the package docstring)."""

from __future__ import annotations

from fedge.errors import FedgeError


class ExportError(FedgeError):
    """The model cannot be exported; the message says what to change."""


class InvalidOptionError(ExportError, ValueError):
    """An export option (loss, optimizer, shape, size …) is malformed or unknown."""


class UnsupportedLayerError(ExportError):
    """The Keras model uses a layer (or a layer setting) fedge cannot export."""


class UnsupportedModelError(ExportError):
    """The model as a whole cannot be exported (inputs, outputs, topology)."""


class ConversionError(ExportError):
    """The TFLite converter failed, or emitted an op outside the builtin set."""


class TargetUnsupportedError(ExportError):
    """The graph uses an op (version) the requested target runtime lacks."""


class VerificationError(ExportError):
    """An exported model failed a verification check; nothing was written."""
