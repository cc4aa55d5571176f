"""Training a Tokenizer with Lightning: the module (`TokenizerModule`), its settings and parts, and the
callbacks a training run uses (reconstruction grids, SLURM requeue)."""

from vartok.training.module import TokenizerModule
from vartok.training.settings import LossWeights, Optimization

__all__ = ["LossWeights", "Optimization", "TokenizerModule"]
