"""Checkpoints of other projects -> vartok exports (`vartok-convert`)."""
