"""Reward throughput on the built-in dev split: gold answers plus perturbed and broken SQL.

Compares 1 and 2 scoring threads in one process and reports rewards per second, cold (first
pass: connections opened, gold results executed) and warm (gold cached).

    python experiments/bench_reward.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time

from zorro_jax.tasks.text2sql import RewardConfig, RewardFn, format_answer, load_builtin


def perturbations(sql: str) -> list[str]:
    """Plausible wrong answers: flipped order, changed constants, dropped filter, a typo."""
    out = [sql.replace("DESC", "ASC") if "DESC" in sql else sql.replace("COUNT(*)", "COUNT(1) + 1")]
    out.append(re.sub(r"\b(\d+)\b", lambda m: str(int(m.group(1)) + 1), sql, count=1))
    out.append(sql.split(" WHERE ")[0] if " WHERE " in sql else sql + " LIMIT 1")
    out.append(sql.replace("SELECT", "SELEC", 1))
    return [format_answer(s) for s in out]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm passes per thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", default=None, help="write results to this path")
    args = parser.parse_args(argv)

    tasks = load_builtin("dev", args.cache_dir)
    completions, batch = [], []
    for task in tasks:
        for c in [format_answer(task.gold_sql)] + perturbations(task.gold_sql):
            completions.append(c)
            batch.append(task)

    rows = []
    for threads in args.threads:
        with RewardFn(RewardConfig(threads=threads)) as fn:
            start = time.perf_counter()
            rewards, details = fn.score(completions, batch)
            cold = time.perf_counter() - start
            warm = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn.score(completions, batch)
                warm.append(time.perf_counter() - start)
        reasons = collections.Counter(d.reason for d in details)
        best = min(warm)
        rows.append(
            {
                "threads": threads,
                "n": len(completions),
                "cold_s": cold,
                "warm_s": best,
                "cold_per_s": len(completions) / cold,
                "warm_per_s": len(completions) / best,
                "mean_reward": float(rewards.mean()),
                "reasons": dict(reasons),
            }
        )

    base = rows[0]["warm_per_s"]
    print(f"{'threads':>7} {'n':>5} {'cold r/s':>9} {'warm r/s':>9} {'speedup':>8} {'mean R':>7}")
    for r in rows:
        print(
            f"{r['threads']:>7} {r['n']:>5} {r['cold_per_s']:>9.1f} {r['warm_per_s']:>9.1f} "
            f"{r['warm_per_s'] / base:>8.2f} {r['mean_reward']:>7.3f}"
        )
    print("reasons:", rows[0]["reasons"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "bench_reward", "split": "dev", "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
