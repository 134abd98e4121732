"""ferry's own gRPC transport: HTTP/2 framing on the event loop (see connection.py)."""
