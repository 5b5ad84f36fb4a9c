"""`python -m kgrow ...` runs the `kgrow` command line (see `kgrow.cli`)."""
import sys

from kgrow.cli import main

sys.exit(main())
