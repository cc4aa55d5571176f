"""The frozen networks that measure images — Inception-v3 for FID, VGG16 for LPIPS — and where their weights
come from (explicit path → torch hub cache → download if allowed → a clear error).

nets/ imports nothing else from vartok, so both models/ (the training LPIPS loss) and metrics/ (the
evaluation) use it without importing each other. Submodules: :mod:`vartok.nets.weights` (the resolver),
:mod:`vartok.nets.lpips` (LPIPS-VGG), :mod:`vartok.nets.inception` (the FID feature network).
"""
