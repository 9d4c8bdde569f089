"""fedge: on-device federated training.

This package holds what every side of fedge shares and nothing heavy: the
command line, the error base class, the manifest format written by
``model_export`` and read by the service and the agent, and the adapter over
the stock TFLite runtimes. It never imports TensorFlow at module level.
"""

__version__ = "0.1.0"
