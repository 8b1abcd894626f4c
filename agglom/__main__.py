import sys

from agglom.cli import main

sys.exit(main())
