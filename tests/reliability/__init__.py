"""Fault-injection suite of issue 9: ingests killed, Weaviate killed, ledger unavailable."""
