"""Socket.IO churn benchmark: memory, GC pauses and delivery while clients come and go, vs Node.

Beside bench/realtime.py (the steady state), with its helpers and the same official Node client
in one process (bench/peers/socketio-node/churn.js): --steady clients stay connected and receive
events published from a separate process at --events/s, while churn clients connect at --rate/s,
stay 1-5 s and leave (55% websocket close, 20% long-polling close, 15% TCP reset with no close,
10% frozen: stop reading and answering pings, reset after 60 s). A "minute-equivalent" of
churn is --per-minute connections (2,550: the rate of the 12-minute soak in issue 16). Server
RSS is taken after 10, 30 and 60 minute-equivalents, and once the churn is over and every
churn client gone (idle); delivery p50/p99/max of the steady clients per segment; our server's
longest collector pause from /metrics (python_gc_longest_pause_seconds).

    .venv/bin/python -m bench.realtime_churn [--quick] [--minutes 60] [--only python-shipped node-reference]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.realtime import (
    Bench,
    Driver,
    cpu_seconds,
    free_port,
    gc_pauses,
    ratio_cell,
    rss_kb,
    stop_server,
    wait_listening,
)

VARIANTS = {
    # name: (description, environment of our server)
    "python-shipped": ("startup heap frozen, Python's thresholds (700, 10, 10): the shipped settings",
                       {"GC_TUNING": "true", "GC_GEN0_THRESHOLD": "700"}),
    "python-untuned": ("no freeze, Python's thresholds (700, 10, 10)", {"GC_TUNING": "false"}),
    "python-freeze-10k": ("startup heap frozen, gen0 threshold 10,000",
                          {"GC_TUNING": "true", "GC_GEN0_THRESHOLD": "10000"}),
    "python-freeze-50k": ("startup heap frozen, gen0 threshold 50,000 (the settings before)",
                          {"GC_TUNING": "true", "GC_GEN0_THRESHOLD": "50000"}),
}
CHECKPOINTS = (10, 30, 60)  # minute-equivalents, scaled by --minutes / 60


@dataclass
class Run:
    name: str
    description: str
    figures: dict = field(default_factory=dict)


async def longest_gc_pause_ms(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    prefix = 'python_gc_longest_pause_seconds{generation="'
    return {f"gen{line[len(prefix)]}_longest_ms": float(line.rsplit(" ", 1)[1]) * 1000
            for line in text.splitlines() if line.startswith(prefix)}


async def churn_driver(url: str, tokens: Path, steady: int, rate: float) -> Driver:
    driver, ready = await Driver.start("churn.js", url, tokens, steady, rate)
    if ready.get("connected") != steady:
        raise RuntimeError(f"churn driver: {ready}")
    return driver


async def churn(bench: Bench, args: argparse.Namespace, name: str, env: dict[str, str] | None) -> dict:
    port = free_port()
    server = bench.start_server(f"{name}-churn", env, port)
    python = env is not None
    total = round(args.minutes * args.per_minute)
    checkpoints = sorted({max(1, round(total * c / 60)) for c in CHECKPOINTS if c * args.minutes / 60 >= 1}
                         | {total})
    figures: dict = {"connections": total, "segments": []}
    try:
        await wait_listening(port, server)
        driver = await churn_driver(f"http://127.0.0.1:{port}", bench.tokens_file, args.steady, args.rate)
        await asyncio.sleep(3)
        await driver.command("report")  # the connects' own deliveries are not counted
        figures["rss_start_mb"] = rss_kb(server.pid) / 1024
        cpu_server, cpu_driver = cpu_seconds(server.pid), cpu_seconds(driver.proc.pid)
        began = time.monotonic()
        bench.args.seconds = total / args.rate + 2
        publishing = asyncio.create_task(bench.publish(f"{name}-churn", env))
        await driver.command("start")
        for checkpoint in checkpoints:
            while (stats := await driver.command("stats"))["started"] < checkpoint:
                if time.monotonic() - began > total / args.rate * 3 + 60:
                    raise RuntimeError(f"churn fell behind: {stats}")
                await asyncio.sleep(0.5)
            segment = {"minutes": round(checkpoint / args.per_minute, 1),
                       "rss_mb": rss_kb(server.pid) / 1024, **await driver.command("report"),
                       "live": stats["live"], "failed": stats["failed"]}
            if python:
                segment.update(await gc_pauses(port))
            figures["segments"].append(segment)
            print(f"  {name} {json.dumps(segment)}", flush=True)
        figures["churn_seconds"] = time.monotonic() - began
        figures["server_cpu_s"] = cpu_seconds(server.pid) - cpu_server
        figures["driver_cpu_s"] = cpu_seconds(driver.proc.pid) - cpu_driver
        figures["published"] = await publishing
        figures["tail"] = await driver.command("report")  # delivered while the publisher finished
        driver.proc.stdin.write(b"stop\n")  # every churn client gone (frozen ones after 60 s)
        await driver.proc.stdin.drain()
        stopped = await driver.read(timeout=120)
        await asyncio.sleep(5)
        figures["rss_idle_mb"] = rss_kb(server.pid) / 1024
        figures["stats"] = await driver.command("stats")
        figures["stopped"] = stopped
        if python:
            figures.update(await longest_gc_pause_ms(port))
            figures["gc"] = await gc_pauses(port)
        await driver.quit()
        return figures
    finally:
        stop_server(server)


def summarise(run: Run) -> None:
    f = run.figures
    segments = f["segments"]
    for segment in segments:
        f[f"rss_{segment['minutes']:g}"] = segment["rss_mb"]
    f["p50"] = max(s["p50"] for s in segments if s.get("received"))
    f["p99"] = max(s["p99"] for s in segments if s.get("received"))
    f["max"] = max(s["max"] for s in segments if s.get("received"))
    f["received"] = sum(s.get("received", 0) for s in segments) + f["tail"].get("received", 0)
    f["gc_longest_ms"] = max((f.get(f"gen{g}_longest_ms", 0) for g in range(3)), default=None)
    gc_figures = f.get("gc", {})
    f["gc_passes"] = "/".join(str(int(gc_figures.get(f"gen{g}_count", 0))) for g in range(3)) \
        if gc_figures else None
    f["gc_ms"] = sum(gc_figures.get(f"gen{g}_ms", 0) for g in range(3)) if gc_figures else None


def table(runs: list[Run], minutes: list[float]) -> str:
    node = next((r for r in runs if r.name == "node-reference"), None)
    rss_heads = [f"RSS MB at {m:g}" for m in minutes]
    heads = ["server", "RSS MB at start", *rss_heads, "RSS MB idle after", "p99 ms", "max ms",
             "longest GC pause ms", "GC passes gen0/1/2 (total ms)", "events received"]
    rows = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]

    def cell(run: Run, key: str, fmt: str) -> str:
        return ratio_cell(run, node, key, fmt)

    for run in runs:
        f = run.figures
        gc_text = f"{f['gc_passes']} ({f['gc_ms']:.0f})" if f.get("gc_passes") else "-"
        rows.append("| " + " | ".join([
            f"{run.name}: {run.description}", cell(run, "rss_start_mb", ".0f"),
            *[cell(run, f"rss_{m:g}", ".0f") for m in minutes], cell(run, "rss_idle_mb", ".0f"),
            cell(run, "p99", ".1f"), cell(run, "max", ".1f"),
            cell(run, "gc_longest_ms", ".1f"), gc_text, str(f.get("received", "-"))]) + " |")
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> None:
    total = round(args.minutes * args.per_minute)
    # What bench.realtime's setup and publisher read: the steady clients are its "clients".
    bench = Bench(argparse.Namespace(clients=args.steady, idle=args.steady + args.pool, rate=args.events,
                                     seconds=0, path="outbox"))
    print(f"churn bench: {args.steady} steady clients, {args.events:g} events/s to them; churn "
          f"{args.rate:g} connections/s up to {total} ({args.minutes:g} minute-equivalents of "
          f"{args.per_minute} connections); load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    plan = [Run(n, d) for n, (d, _) in VARIANTS.items() if n in args.only or not args.only]
    if not args.only or "node-reference" in args.only:
        plan.append(Run("node-reference", "socket.io 4.8 + redis-adapter, library defaults"))
    envs = {name: env for name, (_, env) in VARIANTS.items()}
    try:
        await bench.prepare()
        for run in plan:
            run.figures = await churn(bench, args, run.name, envs.get(run.name))
            summarise(run)
            print(f"{run.name}: {json.dumps({k: v for k, v in run.figures.items() if k != 'segments'})}",
                  flush=True)
    finally:
        await bench.cleanup()
    minutes = [s["minutes"] for s in plan[0].figures["segments"]]
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(plan, minutes))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="minute-equivalents of churn")
    parser.add_argument("--per-minute", type=int, default=2550, help="connections per minute-equivalent")
    parser.add_argument("--rate", type=float, default=60, help="churn connections started per second")
    parser.add_argument("--steady", type=int, default=200)
    parser.add_argument("--pool", type=int, default=1000, help="users the churn clients sign in as")
    parser.add_argument("--events", type=float, default=100, help="events/s to the steady clients")
    parser.add_argument("--only", nargs="*", default=[],
                        help=f"runs to do: {', '.join(VARIANTS)}, node-reference")
    parser.add_argument("--quick", action="store_true", help="6 minute-equivalents of 100, 50 steady")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.per_minute, args.steady, args.pool, args.rate = 6, 100, 50, 200, 50
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
