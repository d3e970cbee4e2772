"""Content policy: what may reach a model, judged by rules and, when Grok is configured, a
classifier (docs/moderation.md)."""

from server.moderation.moderator import Moderator, make_moderator, screen
from server.moderation.policy import (
           CATEGORIES,
           ContentPolicy,
           Context,
           Violation,
           flatten,
           load_policy,
)

__all__ = ["CATEGORIES", "ContentPolicy", "Context", "Moderator", "Violation", "flatten", "load_policy",
           "make_moderator", "screen"]
