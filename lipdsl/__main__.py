"""``python -m lipdsl`` = the ``lipdsl`` command."""
import sys

from lipdsl.app.cli import main

sys.exit(main())
