"""slideproc: whole-slide batch engine for bone-marrow cytology.

Importing the package is cheap on purpose: TensorFlow/Keras load only in the
classify, train and evaluate code paths (see tests/test_cli.py).
"""

__version__ = "0.1.0"
