"""fedge layers: forward passes and hand-written backward passes in TFLite builtin ops.

Importing a layer module imports TensorFlow; the package itself does not.
"""
