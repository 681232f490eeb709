"""The base every step stands on: settings, typed records, ids, errors. Imports nothing above."""
