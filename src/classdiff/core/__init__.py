"""The base layer: configs, atomic I/O and result encoding, and the read-off rules for per-class timescales.

Nothing here imports another classdiff subpackage; everything else may import from here.
"""
