"""freshkb loaders."""
