"""Transports: KServe v2 over HTTP (FastAPI/uvicorn) and gRPC (grpc.aio), and their codecs."""
