"""The trainer service: synthetic data, Keras training, tf2onnx export, evaluation, publishing.

Only this package imports TensorFlow, Keras and tf2onnx, and only inside the
functions that need them, so ``skyserve-train --help`` and the renderer stay light.
"""
