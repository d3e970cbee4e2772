"""What things cost in credits (API.md): cost = ceil(base x quality multiplier)."""

from __future__ import annotations

import math
from typing import Literal

Action = Literal["image", "video", "avatar", "avatar_thumbnail"]
Quality = Literal["standard", "hd", "premium"]

BASE_COSTS: dict[str, int] = {"image": 5, "video": 15, "avatar": 10, "avatar_thumbnail": 5}
QUALITY_MULTIPLIERS: dict[str, float] = {"standard": 1.0, "hd": 1.5, "premium": 2.0}


def cost_of(action: Action, quality: Quality = "standard") -> int:
    return math.ceil(BASE_COSTS[action] * QUALITY_MULTIPLIERS[quality])


def cost_table() -> dict[str, object]:
    """The table served by GET /api/credits/costs."""
    return {
        "base": dict(BASE_COSTS),
        "quality_multipliers": dict(QUALITY_MULTIPLIERS),
        "examples": {
            action: {quality: cost_of(action, quality) for quality in QUALITY_MULTIPLIERS}  # type: ignore[arg-type]
            for action in ("image", "video")
        },
        "formula": "ceil(base x quality multiplier)",
    }
