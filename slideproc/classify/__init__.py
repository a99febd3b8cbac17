"""The cell classifier: model building, loading and batch prediction.

Importing this package is cheap; Keras loads in its modules (model, preprocess,
loading, predict), which only the classify, train and evaluate paths import.
"""
