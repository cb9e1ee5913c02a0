"""The random-features score model: activations and Gaussian-equivalence constants, the exact noise-averaged
moments and closed-form gradient flow with per-class curves, sampled feature covariances, and the iterative
GD/Adam trainer (the only module here that imports torch, lazily).

Imports :mod:`classdiff.core` and :mod:`classdiff.data`.
"""
