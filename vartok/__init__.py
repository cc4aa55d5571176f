"""vartok: train 1D and variable-length image tokenizers."""

from vartok.tokenizers.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
__version__ = "0.1.0"
