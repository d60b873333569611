"""``python -m lipdsl`` = the ``lipdsl`` command."""
import sys

from .cli import main

sys.exit(main())
