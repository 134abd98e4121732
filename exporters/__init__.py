"""PyTorch -> ONNX export: load a model, export with a dynamic batch, verify parity, write a repository entry."""
