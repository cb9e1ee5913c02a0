import sys

from classdiff.cli import main

sys.exit(main())
