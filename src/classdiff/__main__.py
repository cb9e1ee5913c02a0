from classdiff.commands.cli import entry

entry()
