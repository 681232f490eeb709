"""`python -m freshkb.cli`: the command line, as the `freshkb` script runs it."""

from freshkb.cli import app

app()
