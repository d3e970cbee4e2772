"""AI providers: xAI Grok when GROK_API_KEY is set, else the offline local renderer."""
