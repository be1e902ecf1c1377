"""The canary's decision quality in simulation (``training.canary.judge``, the rule `adapters decide` applies).

Each rollout draws rated answers one by one with known true negative-rating rates for the canary and the
incumbent: an answer lands on the canary with probability ``training.canary_percent`` %, and is rated down with
its arm's true rate. The decision step runs after every ``--every`` ratings, as `train watch` runs it every
``training.decide_every_s``; a rollout that reaches ``--budget`` rated answers undecided gets the
``canary_max_hours`` rule (the budget stands for the hours). Per scenario, over ``--rollouts`` rollouts:

- false promotions (the canary is truly worse, yet promoted), against ``canary_false_promotion``;
- false rollbacks (the canary is truly better, yet rolled back), against ``canary_false_rollback``;
- the median and p90 of rated answers per arm at the decision, and the share decided by the time-out.

The yardstick is the configured error rate itself: each rate is printed as a ratio to it (goal: <= 1). No
machine figures are involved, so the result does not depend on the machine.

    .venv/ml/bin/python bench/canary.py [--rollouts 1000] [--every 1] [--budget 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from streamtune.quality import Figures
from streamtune.settings import TrainingSettings
from training.canary import judge

SCENARIOS = [
    # name, true negative rate of the canary, of the incumbent. With the default canary_effect 1.5, the
    # error rates are promised at a ratio of 1.5 (or 1/1.5) and beyond; inside, either decision is acceptable.
    ("3x better", 0.10, 0.30),
    ("1.5x better (the bound)", 0.20, 0.30),
    ("1.5x better, rare negatives", 0.04, 0.06),
    ("1.2x better (indifference)", 0.20, 0.24),
    ("equal (indifference)", 0.20, 0.20),
    ("1.2x worse (indifference)", 0.24, 0.20),
    ("1.5x worse, rare negatives", 0.06, 0.04),
    ("1.5x worse (the bound)", 0.30, 0.20),
    ("3x worse", 0.30, 0.10),
    ("all negative vs all positive", 1.00, 0.00),
    ("all positive vs all negative", 0.00, 1.00),
]


def rollout(
    rng: np.random.Generator, conf: TrainingSettings, canary_rate: float, incumbent_rate: float, every: int, budget: int
) -> tuple[str, int, int, bool]:
    """(action, canary's rated answers, incumbent's, decided by the time-out)."""
    canary, incumbent = Figures(), Figures()
    on_canary = rng.random(budget) < conf.canary_percent / 100
    down = rng.random(budget)
    for n in range(budget):
        arm, rate = (canary, canary_rate) if on_canary[n] else (incumbent, incumbent_rate)
        arm.rated += 1
        if down[n] < rate:
            arm.negative += 1
        else:
            arm.positive += 1
        if (n + 1) % every == 0:
            verdict = judge(canary, incumbent, conf, 0.0)
            if verdict.action != "wait":
                return verdict.action, canary.rated, incumbent.rated, False
    verdict = judge(canary, incumbent, conf, conf.canary_max_hours)
    return verdict.action, canary.rated, incumbent.rated, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--every", type=int, default=1, help="ratings between decision steps")
    parser.add_argument("--budget", type=int, default=2000, help="rated answers before the time-out rule")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    conf = TrainingSettings()
    rng = np.random.default_rng(args.seed)
    print(
        f"defaults: canary_percent {conf.canary_percent}, canary_min_rated {conf.canary_min_rated}, "
        f"canary_false_promotion {conf.canary_false_promotion}, canary_false_rollback {conf.canary_false_rollback}, "
        f"canary_effect {conf.canary_effect}; "
        f"{args.rollouts} rollouts per scenario, a decision step every {args.every} rating(s), time-out after "
        f"{args.budget} rated answers"
    )
    header = (
        f"{'scenario':<30} {'canary':>6} {'incumb.':>7} {'promote':>8} {'rollback':>8} {'wrong':>7} "
        f"{'wrong/allowed':>13} {'median n (c/i)':>15} {'p90 n (c/i)':>12} {'timed out':>9}"
    )
    print(header)
    begin = time.monotonic()
    for name, canary_rate, incumbent_rate in SCENARIOS:
        results = [
            rollout(rng, conf, canary_rate, incumbent_rate, args.every, args.budget) for _ in range(args.rollouts)
        ]
        promoted = sum(1 for r in results if r[0] == "promote") / len(results)
        rolled = 1 - promoted
        effect = conf.canary_effect - 1e-9  # the bound itself is judged
        if canary_rate >= incumbent_rate * effect:
            wrong, allowed = promoted, conf.canary_false_promotion
        elif canary_rate * effect <= incumbent_rate:
            wrong, allowed = rolled, conf.canary_false_rollback
        else:
            wrong, allowed = float("nan"), float("nan")  # inside the indifference zone: neither decision is wrong
        canary_n = [r[1] for r in results]
        incumbent_n = [r[2] for r in results]
        p90 = (int(np.percentile(canary_n, 90)), int(np.percentile(incumbent_n, 90)))
        print(
            f"{name:<30} {canary_rate:>6.2f} {incumbent_rate:>7.2f} {promoted:>8.3f} {rolled:>8.3f} {wrong:>7.3f} "
            f"{wrong / allowed:>13.2f} {f'{statistics.median(canary_n):.0f}/{statistics.median(incumbent_n):.0f}':>15} "
            f"{f'{p90[0]}/{p90[1]}':>12} {sum(r[3] for r in results) / len(results):>9.3f}"
        )
    print(f"({time.monotonic() - begin:.0f}s)")


if __name__ == "__main__":
    main()
