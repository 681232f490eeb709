"""The `freshkb` command line (the console script `freshkb = "freshkb.cli:app"`)."""

from freshkb.cli.app import app

__all__ = ["app"]
