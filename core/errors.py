"""The three kinds of failure freshkb distinguishes, and whether a retry helps.

- TransientError: the network, Weaviate being unavailable, a 429. Retrying may succeed;
  Prefect tasks retry these.
- DataError: a corrupt file, a failed expectation. Retrying cannot help; the item is reported
  and the run goes on without it.
- ConfigError: a wrong setting or a missing dependency. Raised at start, before any work.
"""

from __future__ import annotations


class FreshkbError(Exception):
    """Base class of every error freshkb raises on purpose."""


class TransientError(FreshkbError):
    """A failure that a retry may fix (network, server unavailable, rate limit)."""


class LLMUnavailable(TransientError):
    """The LLM endpoint is down, timed out, erred, or its breaker is open: answer without it."""


class DataError(FreshkbError):
    """Bad input: the item is skipped and reported, retrying will not help."""


class UnsupportedFileType(DataError):
    """A file of a type the source does not read (a LICENSE, a spreadsheet in a policy folder).

    Reported in the run report like any bad file, but not counted as a file that failed to
    parse: it was never a candidate, so it cannot trip the gate's failed-share expectation.
    """


class ConfigError(FreshkbError):
    """A setting, file or dependency is wrong or missing; fix the configuration and rerun."""
