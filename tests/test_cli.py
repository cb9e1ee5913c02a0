"""The CLI skeleton: help lists every command of DESIGN.md; an unbuilt command says so and fails."""

import subprocess
import sys

import pytest

from classdiff.commands import cli

DESIGN_COMMANDS = ["demo", "spectrum", "dynamics", "timescales", "speciation", "train", "evaluate", "sweep", "report"]


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "classdiff", "--help"], capture_output=True, text=True, check=True)
    for name in DESIGN_COMMANDS:
        assert name in out.stdout


def test_unbuilt_command_says_so_and_exits_nonzero(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "notyet", "a command that has no module")
    assert cli.main(["notyet", "x.toml"]) == 2
    assert "not built yet" in capsys.readouterr().err


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
