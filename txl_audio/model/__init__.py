"""Transformer-XL model: ``from txl_audio.model import TransformerXL``."""

from txl_audio.model.memory import DecodingCache, LayerMemory, Memory
from txl_audio.model.transformer import ModelOutput, TransformerXL, compiled_layers

__all__ = ["DecodingCache", "LayerMemory", "Memory", "ModelOutput", "TransformerXL", "compiled_layers"]
