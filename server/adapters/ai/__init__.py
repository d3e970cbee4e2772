"""AI providers: xAI Grok when GROK_API_KEY is set, else the offline local renderer."""

from __future__ import annotations

from server.adapters.ai.base import AIProvider
from server.config import Settings


def make_ai(settings: Settings) -> AIProvider:
    if settings.grok_api_key is not None and settings.grok_api_key.get_secret_value():
        from server.adapters.ai.grok import GrokProvider

        return GrokProvider(settings)
    from server.adapters.ai.local import LocalProvider

    return LocalProvider(settings)


__all__ = ["AIProvider", "make_ai"]
