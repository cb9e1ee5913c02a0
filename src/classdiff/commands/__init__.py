"""One module per CLI command; see :mod:`classdiff.commands.cli` for the interface every module follows.

:data:`COMMANDS` is the one list of the command names (each is the module ``classdiff.commands.<name>``,
hyphens as underscores); the sweepable ones are :data:`classdiff.core.config.SWEEP_COMMANDS`.
"""

COMMANDS: tuple[str, ...] = (
    "demo", "spectrum", "dynamics", "timescales", "speciation", "speciation-map", "train", "evaluate", "sweep",
    "report", "audit", "generate", "memorization", "seeds", "cloning",
)
