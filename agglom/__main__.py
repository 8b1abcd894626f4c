import sys

from agglom.cli import entry

sys.exit(entry())
