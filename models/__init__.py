"""Decoder-only language models built from size presets (never downloaded)."""

from .build import build_model, count_parameters
from .presets import PRESETS, ModelConfig, ModelPreset, get_preset

__all__ = ["build_model", "count_parameters", "PRESETS", "ModelConfig", "ModelPreset", "get_preset"]
