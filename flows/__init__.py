"""freshkb flows."""
