"""Example models trained in seconds on scikit-learn's bundled datasets (no download).

Each example module has a model class importable as a `ferry export` SOURCE
(`examples.digits:DigitsCNN`), the name of its input, and `train(out_dir)`, which writes
weights.pt, val.npz, test.npz (inputs + labels), reference.npz (inputs) and metrics.json.
"""

# Example name -> `ferry export` SOURCE of its model class.
EXAMPLE_SOURCES = {
    "digits": "examples.digits:DigitsCNN",
    "breast_cancer": "examples.breast_cancer:BreastCancerMLP",
    "diabetes": "examples.diabetes:DiabetesMLP",
    "encoder": "examples.encoder:EncoderClassifier",
}
EXAMPLE_NAMES = tuple(EXAMPLE_SOURCES)
# Stateful examples: exported with `ferry export --stateful` and served by the sequence batcher.
STATEFUL_EXAMPLE_SOURCES = {"timeseries": "examples.timeseries:SignalLSTM"}
ALL_EXAMPLE_NAMES = EXAMPLE_NAMES + tuple(STATEFUL_EXAMPLE_SOURCES)
