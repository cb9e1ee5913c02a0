"""The CLI: help lists every command of DESIGN.md; every command module follows the one interface."""

import subprocess
import sys

import pytest

from classdiff.commands import cli

DESIGN_COMMANDS = ["demo", "spectrum", "dynamics", "timescales", "speciation", "train", "evaluate", "sweep", "report"]


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "classdiff", "--help"], capture_output=True, text=True, check=True)
    for name in DESIGN_COMMANDS:
        assert name in out.stdout


def test_every_command_module_follows_the_interface():
    from classdiff.commands import COMMANDS

    for name in COMMANDS:
        module = cli.load_command(name)
        assert isinstance(module.HELP, str) and module.HELP
        assert callable(module.configure) and callable(module.run)
    with pytest.raises(ValueError, match="must be one of"):
        cli.load_command("notyet")


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_import_classdiff_does_not_import_torch():
    code = "import classdiff, classdiff.data.mixture, classdiff.core.config, classdiff.commands.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["GaussianMixture", "load_config"])
def test_lazy_api(name):
    import classdiff

    assert callable(getattr(classdiff, name))
