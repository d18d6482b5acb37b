"""python -m editx → the command-line interface."""

from editx.cli import main

raise SystemExit(main())
