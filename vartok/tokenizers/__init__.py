"""The tokenizer as a whole: Tokenizer, configs and presets, length policies."""

from vartok.tokenizers.config import PRESETS, TokenizerConfig, preset_config
from vartok.tokenizers.length import LengthPolicy
from vartok.tokenizers.loading import load_tokenizer
from vartok.tokenizers.tokenizer import Encoded, Tokenizer, TokenizerOutput

__all__ = ["PRESETS", "Encoded", "LengthPolicy", "Tokenizer", "TokenizerConfig", "TokenizerOutput", "load_tokenizer", "preset_config"]
