"""`python -m ipugraph ...` is the `ipugraph` command."""
import sys

from .cli import main

sys.exit(main())
