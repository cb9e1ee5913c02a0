"""One module per CLI command; see :mod:`classdiff.commands.cli` for the interface every module follows."""
