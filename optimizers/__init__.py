"""Model optimization: graph, INT8, FP16 and TensorRT variants, accuracy-gated and benchmarked."""
