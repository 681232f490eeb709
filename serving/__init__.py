"""freshkb serving."""
