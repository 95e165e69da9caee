"""The one error type of demand input: a file, URL or row that cannot be used."""

from __future__ import annotations


class DemandInputError(ValueError):
    """Demand input that cannot be used; the message names the file (or URL), line and field."""


# The name replay callers have always caught.
TraceError = DemandInputError
