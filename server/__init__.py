"""Lustify backend: aiohttp REST + Socket.IO server, domain services and adapters."""

__version__ = "0.1.0"
