"""Enqueueing arq jobs with the caller's request id, the start-time fair queue generation jobs
wait in (`take_fairly`), and the workers' heartbeat that /health reads."""

from __future__ import annotations

import time
import uuid
import weakref
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import Job, serialize_job

from server.config import Settings
from server.logs import request_id

WORKER_STALE_SECONDS = 15.0  # no heartbeat this long: no worker is running
PARK_MS = 86_400_000  # a waiting generation job's arq score: a day ahead, never due by itself
USER_TAG_TTL_SECONDS = 86_400
_SCRIPTS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

# KEYS: job, result, queue, fair set, virtual time, user's next tag.
# ARGV: job id, job data, parked score, job data lifetime (ms), user tag lifetime (s).
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return false end
local tag = math.max(tonumber(redis.call('get', KEYS[5]) or '0'), tonumber(redis.call('get', KEYS[6]) or '0'))
redis.call('set', KEYS[6], string.format('%d', tag + 1), 'EX', ARGV[5])
redis.call('psetex', KEYS[1], ARGV[4], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[1])
redis.call('zadd', KEYS[4], tag, ARGV[1])
return tag
"""
# KEYS: fair set, queue, virtual time. ARGV: how many, now (ms), in-progress key prefix and lifetime (ms).
# Each job taken is made due now and marked running by this worker, as arq marks a job it
# starts; entries whose job is gone (finished, expired) or runs elsewhere are dropped.
_TAKE = """
local out, wanted, looked = {}, tonumber(ARGV[1]), 0
while #out < wanted and looked < wanted * 4 + 100 do
  local popped = redis.call('zpopmin', KEYS[1])
  if #popped == 0 then break end
  looked = looked + 1
  local id = popped[1]
  if redis.call('zscore', KEYS[2], id) and redis.call('set', ARGV[3] .. id, '1', 'PX', ARGV[4], 'NX') then
    redis.call('zadd', KEYS[2], ARGV[2], id)
    out[#out + 1] = id
  end
  if tonumber(popped[2]) > tonumber(redis.call('get', KEYS[3]) or '0') then
    redis.call('set', KEYS[3], popped[2])
  end
end
return out
"""
# KEYS: queue. ARGV: now (ms), in-progress key prefix, how many to look at, how many to
# return, in-progress lifetime (ms). Returns id, score, id, score... of the jobs marked.
# arq keeps a running job in its queue: skipping those here spares round trips per job.
_DUE = """
local out, wanted = {}, tonumber(ARGV[4]) * 2
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
for i = 1, #due, 2 do
  if redis.call('set', ARGV[2] .. due[i], '1', 'PX', ARGV[5], 'NX') then
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    if #out >= wanted then break end
  end
end
return out
"""


async def enqueue(queue: ArqRedis, function: str, *args: Any, job_id: str | None = None,
                  **kwargs: Any) -> Job | None:
    """Queue `function`; None when a job with this id already exists (arq keeps one)."""
    return await queue.enqueue_job(function, *args, _job_id=job_id, request_id=request_id.get(), **kwargs)


def fair_key(queue_name: str, kind: str, *parts: object) -> str:
    return ":".join([queue_name, "fair", kind, *map(str, parts)])


def _script(redis: Any, source: str) -> Any:
    # Registered once per client; redis-py sends it again after a Redis restart forgot it.
    scripts = _SCRIPTS.setdefault(redis, {})
    if source not in scripts:
        scripts[source] = redis.register_script(source)
    return scripts[source]


async def enqueue_generation(queue: ArqRedis, *, function: str, kind: str, content_id: uuid.UUID | str,
                             job_id: str, user_id: uuid.UUID | str) -> bool:
    """Queue a generation job in its kind's fair set; False if a job with this id exists."""
    name = queue.default_queue_name
    now = int(time.time() * 1000)
    data = serialize_job(function, (str(content_id),), {"request_id": request_id.get()}, None, now,
                         serializer=queue.job_serializer)
    tag = await _script(queue, _ENQUEUE)(
        keys=[job_key_prefix + job_id, result_key_prefix + job_id, name, fair_key(name, kind),
              fair_key(name, kind, "v"), fair_key(name, kind, "u", user_id)],
        args=[job_id, data, now + PARK_MS, PARK_MS + queue.expires_extra_ms, USER_TAG_TTL_SECONDS])
    return tag is not None


async def take_fairly(redis: Any, *, queue_name: str, kind: str, count: int,
                      running_ms: int) -> list[tuple[str, int]]:
    """Up to `count` waiting jobs of this kind, lowest tag first, made due now and marked
    running (for `running_ms`, as arq marks the jobs it starts): (job id, score) each."""
    if count <= 0:
        return []
    now = int(time.time() * 1000)
    taken = await _script(redis, _TAKE)(
        keys=[fair_key(queue_name, kind), queue_name, fair_key(queue_name, kind, "v")],
        args=[count, now, in_progress_key_prefix, running_ms])
    return [(job_id.decode(), now) for job_id in taken]


async def due_jobs(redis: Any, *, queue_name: str, count: int, look: int, running_ms: int) -> list[tuple[str, int]]:
    """Up to `count` jobs due now that no worker runs (video polls, retries, emails, crons),
    marked running as `take_fairly` does: (job id, score) each."""
    if count <= 0:
        return []
    found = await _script(redis, _DUE)(
        keys=[queue_name], args=[int(time.time() * 1000), in_progress_key_prefix, look, count, running_ms])
    return [(found[i].decode(), int(float(found[i + 1]))) for i in range(0, len(found), 2)]


async def generation_job_alive(queue: ArqRedis, *, kind: str, job_id: str | None,
                               running_for_ms: tuple[int, int] | None = None) -> bool:
    """Whether arq still holds this queued generation's job to run: due, running, deferred, or
    waiting its turn.

    `running_for_ms` is (arq's in-progress key lifetime, the longest a live run may take to
    claim its row): a job marked running for longer than that without claiming its row ran on
    a worker that died (arq would only retry it once the marker expires, minutes later).
    """
    if not job_id:
        return False
    name = queue.default_queue_name
    async with queue.pipeline(transaction=False) as pipe:
        pipe.pttl(in_progress_key_prefix + job_id)
        pipe.zscore(name, job_id)
        pipe.zscore(fair_key(name, kind), job_id)
        running, score, waiting = await pipe.execute()
    if running > 0 or running == -1:
        return running_for_ms is None or running_for_ms[0] - running < running_for_ms[1]
    if score is None:
        return False
    # Parked without a fair entry (lost between Redis writes): it would never become due.
    return score < time.time() * 1000 + PARK_MS / 2 or waiting is not None


def worker_heartbeat_key(settings: Settings) -> str:
    """A sorted set: worker id -> time of its last heartbeat."""
    return settings.key("workers")


async def live_workers(redis: Any, settings: Settings) -> int:
    """How many workers beat within WORKER_STALE_SECONDS."""
    return await redis.zcount(worker_heartbeat_key(settings), time.time() - WORKER_STALE_SECONDS, "+inf")
