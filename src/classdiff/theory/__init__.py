"""Random-matrix theory and its predictions: the spectrum of the feature covariance for K-class mixtures,
per-class generalization and memorization times and learning orders, phase diagrams, and per-class speciation.

numpy/scipy only (never torch). Imports :mod:`classdiff.core`, :mod:`classdiff.data` and :mod:`classdiff.rf`.
"""
