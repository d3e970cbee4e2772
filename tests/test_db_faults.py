"""Which errors mean "a dependency went away" (503 + Retry-After, job retried) and which are bugs."""

from __future__ import annotations

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, IntegrityError

from db.faults import is_connection_lost, is_retryable_conflict


def _wrapped(orig: Exception) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.InternalClientError("cannot switch to state 15; protocol is in the failed state"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    asyncpg.exceptions.InterfaceError("connection is closed"),
    ConnectionResetError(104, "Connection reset by peer"),
    ConnectionRefusedError(111, "Connect call failed"),
    RedisConnectionError("Connection closed by server."),
])
def test_connection_loss_of_every_kind_is_recognised(error: Exception) -> None:
    assert is_connection_lost(error)
    assert is_connection_lost(_wrapped(error))  # as SQLAlchemy hands it up
    try:
        raise RuntimeError("while handling") from error
    except RuntimeError as chained:
        assert is_connection_lost(chained)


@pytest.mark.parametrize("error", [ValueError("bad"), KeyError("x"), IntegrityError("INSERT", {}, Exception("dup"))])
def test_bugs_and_refusals_are_not_connection_loss(error: Exception) -> None:
    assert not is_connection_lost(error)


def test_deadlocks_and_serialization_failures_are_retryable() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    assert is_retryable_conflict(_wrapped(Orig("40P01"))) and is_retryable_conflict(_wrapped(Orig("40001")))
    assert not is_retryable_conflict(_wrapped(Orig("23505")))
