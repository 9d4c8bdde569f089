"""The root of fedge's exception tree.

Every package draws its own tree under :class:`FedgeError`, so the command
line can tell a user's mistake (print it, exit 2) from a bug (traceback)::

    FedgeError
    ├── fedge.manifest.ManifestError        bad or inconsistent manifest.json
    ├── fedge.runtime.RuntimeUnavailable    no TFLite runtime installed
    ├── fedge.runtime.ModelRuntimeError     the model cannot be loaded or run
    ├── model_export.ExportError            …and the packages' own trees
    ├── quantization.CodecError (ValueError)
    └── …
"""


class FedgeError(Exception):
    """Something the user can fix: bad input, configuration or environment."""
