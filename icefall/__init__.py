"""zipformer-adapter's library: icefall-compatible Zipformer transducers with adapters."""
