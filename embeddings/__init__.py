"""freshkb embeddings."""
