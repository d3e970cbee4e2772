"""The content policy's rules layer on its labelled evaluation set: precision and recall per
category, refusals of allowed texts, and screening time per prompt.

No services needed (the rules layer is pure CPU; the classifier layer is a network call and
is not measured here).

    .venv/bin/python bench/moderation.py [--repeat 21] [--set tests/data/moderation_eval.jsonl]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.moderation import CATEGORIES, load_policy  # noqa: E402

EVAL_SET = Path(__file__).resolve().parent.parent / "tests" / "data" / "moderation_eval.jsonl"
LONG_PROMPT = ("a cinematic photo of a woman walking along the beach at sunset, golden hour, 35mm film, "
               "soft light, gentle waves, ")


def quality(cases: list[dict], policy) -> None:
    got = [(c, policy.check(c["text"], context=c["context"])) for c in cases]
    print(f"cases: {len(cases)} ({dict(Counter(c['expect'] for c in cases))})")
    print(f"{'category':<12} {'cases':>5} {'precision':>9} {'recall':>7}  (refused at all)")
    for category in CATEGORIES:
        tp = sum(1 for c, v in got if c["expect"] == category and v and v.category == category)
        fp = sum(1 for c, v in got if c["expect"] != category and v and v.category == category)
        fn = sum(1 for c, v in got if c["expect"] == category and not (v and v.category == category))
        refused = sum(1 for c, v in got if c["expect"] == category and v)
        total = tp + fn
        precision = tp / (tp + fp) if tp + fp else float("nan")
        print(f"{category:<12} {total:>5} {precision:>9.3f} {tp / total:>7.3f}  ({refused}/{total})")
    for label, subset in (("all", got), ("first set", [g for g in got if g[0].get("set") != "holdout"]),
                          ("holdout", [g for g in got if g[0].get("set") == "holdout"])):
        disallowed = [(c, v) for c, v in subset if c["expect"] != "allowed"]
        allowed = [(c, v) for c, v in subset if c["expect"] == "allowed"]
        accepted = [c["text"] for c, v in disallowed if v is None]
        refused = [(c["text"], v.category) for c, v in allowed if v is not None]
        print(f"{label}: disallowed accepted {len(accepted)}/{len(disallowed)}, "
              f"allowed refused {len(refused)}/{len(allowed)} ({100 * len(refused) / max(1, len(allowed)):.1f} %)")
        for text, category in refused:
            print(f"    refused (allowed by label): {text!r} as {category}")
        for text in accepted:
            print(f"    accepted (disallowed by label): {text!r}")
    for kind in sorted({c["kind"] for c in cases}):
        subset = [(c, v) for c, v in got if c["kind"] == kind]
        right = sum(1 for c, v in subset if (v.category if v else "allowed") == c["expect"])
        print(f"  kind {kind:<13} {right}/{len(subset)} labelled right")


def timing(cases: list[dict], policy, repeat: int) -> None:
    """Per prompt: the median of `repeat` runs (the machine's noise stays out), then p50/p99 over prompts."""
    medians, raw = [], []
    gc.collect()
    for case in cases:
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            policy.check_fields({"prompt": case["text"]}, context=case["context"])
            runs.append(time.perf_counter() - started)
        medians.append(statistics.median(runs))
        raw.extend(runs)
    medians.sort()
    raw.sort()

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.3f} ms"

    print(f"screening time, eval set ({len(cases)} prompts, median of {repeat} runs each): "
          f"p50 {ms(medians, 0.5)}, p99 {ms(medians, 0.99)}, max {ms(medians, 1.0)}")
    print(f"  every run ({len(raw)}, scheduler noise included): p50 {ms(raw, 0.5)}, p99 {ms(raw, 0.99)}")
    for length in (500, 2000):
        text = (LONG_PROMPT * (length // len(LONG_PROMPT) + 1))[:length]
        runs = []
        for _ in range(max(repeat, 51)):
            started = time.perf_counter()
            policy.check_fields({"prompt": text}, context="prompt")
            runs.append(time.perf_counter() - started)
        runs.sort()
        print(f"  a {length}-character prompt: p50 {ms(runs, 0.5)}, p99 {ms(runs, 0.99)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=EVAL_SET)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    started = time.perf_counter()
    policy = load_policy()
    print(f"rules loaded in {1000 * (time.perf_counter() - started):.0f} ms (Unicode tables and the term index)")
    cases = [json.loads(line) for line in args.set.read_text(encoding="utf-8").splitlines() if line.strip()]
    quality(cases, policy)
    timing(cases, policy, args.repeat)


if __name__ == "__main__":
    main()
