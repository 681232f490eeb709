"""freshkb store."""
