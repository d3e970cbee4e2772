"""bcrypt off the event loop, with every character of a long password significant."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import bcrypt

T = TypeVar("T")


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


def default_threads() -> int:
    """Cores this process may use, less one kept for the event loop; at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


# bcrypt releases the GIL, so 20 logins on 20 threads would outnumber the cores and starve
# the event loop's thread (it held /health for 0.4-0.6 s): a pool of (cores - 1) threads
# makes queued logins wait their turn instead. Per process, because the cores are.
_pools: dict[int, ThreadPoolExecutor] = {}  # by size; one in use
_size = [0]


def use_threads(threads: int) -> None:
    """Size the process's hashing pool (0: default_threads()); called by create_app."""
    _size[0] = threads or default_threads()


async def _run(func: Callable[..., T], *args: Any) -> T:
    size = _size[0] or default_threads()
    pool = _pools.get(size)
    if pool is None:
        pool = _pools[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="bcrypt")
    return await asyncio.get_running_loop().run_in_executor(pool, func, *args)


async def hash_password(password: str, *, rounds: int) -> str:
    return await _run(_hash, password, rounds)


async def verify_password(password: str, hashed: str) -> bool:
    return await _run(_verify, password, hashed)


_dummy: dict[int, str] = {}


async def burn_verify(password: str, *, rounds: int) -> None:
    """Spend the same bcrypt work as a real check, so unknown emails are not faster."""
    if rounds not in _dummy:
        _dummy[rounds] = await hash_password("dummy-password-for-timing", rounds=rounds)
    await verify_password(password, _dummy[rounds])
