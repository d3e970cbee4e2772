"""The one error shape every third-party adapter raises."""

from __future__ import annotations


class UpstreamError(Exception):
    """A provider refused or failed a call.

    `transient` ones (rate limits, 5xx, timeouts) are worth retrying; the rest fail once.
    `message` is for operators' logs; `user_message` is what a user may be shown (it never
    carries credentials, team ids or configuration); `code` is a stable machine name.
    """

    def __init__(self, message: str, *, transient: bool, status: int | None = None,
                 code: str = "provider_error", user_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.status = status
        self.code = code
        self.user_message = user_message if user_message is not None else message
