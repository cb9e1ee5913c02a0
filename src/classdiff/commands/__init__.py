"""One module per CLI command; see :mod:`classdiff.cli` for the interface every module follows."""
