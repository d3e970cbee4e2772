"""Edges to third-party services; each has a production and an embedded implementation."""
