"""Avatars: persistent AI characters with a fixed profile and a thumbnail."""
