"""Transformer-XL model: ``from txl_audio.model import TransformerXL``."""

from txl_audio.model.transformer import IGNORE_INDEX, KVCache, ModelOutput, TransformerXL, compiled_layers

__all__ = ["IGNORE_INDEX", "KVCache", "ModelOutput", "TransformerXL", "compiled_layers"]
