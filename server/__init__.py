"""ferry's serving side: model repository, runtimes, dynamic batcher, data plane and transports."""
