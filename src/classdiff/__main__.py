from classdiff.cli import entry

entry()
