"""freshkb freshkb."""
