"""freshkb store: the index in Weaviate (behind the contracts of store/protocol.py), the sync plan,
the managed Weaviate server and the freshness ledger."""
