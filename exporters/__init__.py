"""PyTorch -> ONNX: load a model, export with a dynamic batch, prove parity, write a model entry."""
