"""Data and its diffusion: the OU forward process, Gaussian mixtures and their exact and empirical scores,
the backward diffusion and cloning experiment, and real labelled image sets (Fashion-MNIST, npz files).

Imports only :mod:`classdiff.core`; numpy/scipy only.
"""
