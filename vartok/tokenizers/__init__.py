"""The tokenizer as a whole: Tokenizer, configs and presets, length policies."""

from vartok.tokenizers.config import PRESETS, TokenizerConfig, TokenizerOverrides, preset_config
from vartok.tokenizers.length import LengthPolicy
from vartok.tokenizers.loading import load_tokenizer
from vartok.tokenizers.tokenizer import Encoded, Tokenizer, TokenizerOutput

__all__ = ["PRESETS", "Encoded", "LengthPolicy", "Tokenizer", "TokenizerConfig", "TokenizerOutput", "TokenizerOverrides", "load_tokenizer", "preset_config"]
