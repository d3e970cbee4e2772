"""bcrypt off the event loop, with every character of a long password significant."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import bcrypt


def _prehash(password: str) -> bytes:
    # bcrypt reads only 72 bytes; a SHA-256 digest (base64, no NULs) keeps all of them in play.
    return base64.b64encode(hashlib.sha256(password.encode("utf-8")).digest())


def _hash(password: str, rounds: int) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode()


def _verify(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password), hashed.encode())
    except ValueError:
        return False


async def hash_password(password: str, *, rounds: int) -> str:
    return await asyncio.to_thread(_hash, password, rounds)


async def verify_password(password: str, hashed: str) -> bool:
    return await asyncio.to_thread(_verify, password, hashed)


_dummy: dict[int, str] = {}


async def burn_verify(password: str, *, rounds: int) -> None:
    """Spend the same bcrypt work as a real check, so unknown emails are not faster."""
    if rounds not in _dummy:
        _dummy[rounds] = await hash_password("dummy-password-for-timing", rounds=rounds)
    await verify_password(password, _dummy[rounds])
