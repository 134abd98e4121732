"""Model optimization: graph, INT8, FP16 and TensorRT variants, gated on accuracy, benchmarked, published."""
