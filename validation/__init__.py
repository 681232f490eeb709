"""freshkb validation."""
