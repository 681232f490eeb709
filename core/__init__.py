"""The base every step stands on: settings, typed records, ids and errors. Imports nothing of freshkb."""
