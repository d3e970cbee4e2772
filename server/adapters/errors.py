"""The one error shape every third-party adapter raises."""

from __future__ import annotations


class UpstreamError(Exception):
    """A provider refused or failed a call; `transient` ones (429, 5xx, timeouts) are worth retrying."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status
