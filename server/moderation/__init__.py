"""Content policy: what may reach a model, judged by rules and, when Grok is configured, a classifier.

`screen(...)` is the rules layer alone; `Moderator` (built once per process, on
Resources.moderator) runs both layers and screens the model's own output. The policy
and its deliberate choices: docs/moderation.md.
"""

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
