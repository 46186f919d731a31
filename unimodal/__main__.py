"""`python -m unimodal ...`: the `unimodal` command without an installed entry point."""
from unimodal.cli import main

raise SystemExit(main())
