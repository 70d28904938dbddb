"""txl_audio: sample-level audio (and text) language modelling with Transformer-XL."""

__version__ = "0.1.0"
