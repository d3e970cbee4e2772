"""Domain errors; each class carries its HTTP status and API.md error code."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    code = "validation_error"
    default_message = "The request is invalid"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details or []
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


class ValidationFailed(DomainError):
    status, code, default_message = 400, "validation_error", "The request is invalid"


class InvalidToken(DomainError):
    status, code, default_message = 400, "invalid_token", "The token is invalid, expired or used"


class InvalidSignature(DomainError):
    status, code, default_message = 400, "invalid_signature", "The signature is invalid"


class Unauthorized(DomainError):
    status, code, default_message = 401, "unauthorized", "Authentication required"


class InvalidCredentials(DomainError):
    status, code, default_message = 401, "invalid_credentials", "Invalid email or password"


class TokenExpired(DomainError):
    status, code, default_message = 401, "token_expired", "The token has expired"


class TokenRevoked(DomainError):
    status, code, default_message = 401, "token_revoked", "The token has been revoked"


class InsufficientCredits(DomainError):
    status, code, default_message = 402, "insufficient_credits", "Not enough credits"

    def __init__(self, *, required: int, balance: int) -> None:
        super().__init__(
            f"This needs {required} credits and the balance is {balance}",
            details=[{"required": required, "balance": balance}],
        )
        self.required = required
        self.balance = balance


class Forbidden(DomainError):
    status, code, default_message = 403, "forbidden", "You may not do this"


class EmailNotVerified(DomainError):
    status, code, default_message = 403, "email_not_verified", "Verify your email address first"


class AvatarLimitReached(DomainError):
    status, code, default_message = 403, "avatar_limit_reached", "Your plan's avatar limit is reached"


class NotFound(DomainError):
    status, code, default_message = 404, "not_found", "Not found"


class MethodNotAllowed(DomainError):
    status, code, default_message = 405, "method_not_allowed", "Method not allowed"


class Conflict(DomainError):
    status, code, default_message = 409, "conflict", "The request conflicts with the current state"


class IdempotencyKeyInUse(DomainError):
    status, code = 409, "idempotency_key_in_use"
    default_message = "A request with this Idempotency-Key is still running; retry shortly"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class PayloadTooLarge(DomainError):
    status, code, default_message = 413, "payload_too_large", "The request body is too large"


class UnsupportedMediaType(DomainError):
    status, code = 415, "unsupported_media_type"
    default_message = "Send the body as JSON with `Content-Type: application/json`"


class ContentPolicyViolation(DomainError):
    status, code = 422, "content_policy_violation"
    default_message = "The request violates the content policy"


class IdempotencyKeyReused(DomainError):
    status, code = 422, "idempotency_key_reused"
    default_message = "This Idempotency-Key was used with another request; use a new key"


class RecordedFailure(DomainError):
    """A failure answered before under the same idempotency key, answered again as it was."""

    commit_before_raise = True  # its record (when new) commits; the work itself was rolled back

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", "")))
        self.status, self.code, self.recorded = status, str(body.get("error", "")), body

    def body(self) -> dict[str, Any]:
        return self.recorded


class RateLimited(DomainError):
    status, code, default_message = 429, "rate_limited", "Too many requests, slow down"


class TooManyActiveGenerations(DomainError):
    """The plan's cap on generations queued or processing at once is reached; nothing was charged."""

    status, code = 429, "too_many_active_generations"
    default_message = "Too many generations queued or in progress"

    def __init__(self, *, active: int, limit: int, plan_id: str, retry_after: int = 5) -> None:
        super().__init__(
            f"You have {active} generations queued or in progress, the most the {plan_id} plan allows "
            "at once; nothing was charged. Try again when one has finished",
            details=[{"active": active, "limit": limit, "plan_id": plan_id, "retry_after": retry_after}],
            headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(DomainError):
    status, code = 503, "service_unavailable"
    default_message = "A dependency is unavailable, try again shortly"


class ScreeningUnavailable(ServiceUnavailable):
    """The content classifier gave no verdict: the request is refused rather than sent unscreened."""

    default_message = "The content check is unavailable right now; nothing was charged. Try again in a few seconds"

    def __init__(self, *, retry_after: int = 5) -> None:
        super().__init__(details=[{"reason": "content_screening_unavailable", "retry_after": retry_after}],
                         headers={"Retry-After": str(retry_after)})


class InternalError(DomainError):
    status, code, default_message = 500, "internal_error", "Internal server error"


def field_errors(pydantic_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """API.md field details from pydantic's error list."""
    details = []
    for err in pydantic_errors:
        field = ".".join(str(part) for part in err.get("loc", ()) if part != "body") or "body"
        message = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            message = "Unknown field"
        details.append({"field": field, "message": message})
    return details
