"""What the server keeps per authenticated socket: who it is and how fast it talks."""

from __future__ import annotations

from server.auth.current_user import CurrentUser

WINDOW_SECONDS = 10.0


class Connection:
    __slots__ = ("user", "expires_at", "window_start", "window_events")

    def __init__(self, user: CurrentUser, *, expires_at: float) -> None:
        self.user = user  # user.session_id: the signed-in session, closed by its logout
        self.expires_at = expires_at  # the access token's expiry: actions stop there
        self.window_start = 0.0
        self.window_events = 0

    def allow_event(self, now: float, limit: int) -> bool:
        """Count one client event in a fixed 10 s window; False once past `limit`."""
        if now - self.window_start >= WINDOW_SECONDS:
            self.window_start = now
            self.window_events = 0
        self.window_events += 1
        return self.window_events <= limit
