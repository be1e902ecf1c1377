"""Question drift (``streamtune.drift``): false alarms on questions about the demo shop, and how soon a change
of subject fires.

The questions are written here from templates (subject x question x slot x phrasing), never the demo's
training questions: the bike shop's subjects (returns, shipping, warranty, hours, rentals, repairs, the
club, support), and two other subjects (cooking, tax returns). They are embedded once with the packaged
MiniLM embedder, as `serve` embeds each question. Two references, as serving would have them:

- ``demo QA``: the 23 questions of the bundled demo QA pairs, what the demo adapter is trained on;
- ``shop sample``: 200 questions drawn from the same templates as the streams (a tenant whose training
  questions were asked the way its users ask them: the case the test's false-alarm promise is about).

Measured, per reference:

- in-distribution streams (each a shuffle of all the shop questions, at least 2,000): windows tested, how
  many fired, the rate against ``significance``;
- switching streams (``--switch-at`` shop questions, then cooking, tax returns, or half tax returns mixed
  into shop questions): questions after the switch until the first firing, median and p90, and firings
  before the switch.

Cost: one test (the tracker's ``mmd_test`` on a full window against the reference) in ms, and an
``observe`` call without a test in µs, each as a ratio to the yardstick: embedding one question with the
same embedder in the same run (median of single-question ``encode`` calls). The test is also timed with
numpy's BLAS limited to one thread (threadpoolctl), as a process that also runs torch would want it.

    OMP_WAIT_POLICY=PASSIVE .venv/ml/bin/python bench/drift.py [--streams 10] [--switches 20] [--window N --every N]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from threadpoolctl import threadpool_limits

from streamtune.drift import DriftConfig, DriftTracker, mmd_test
from streamtune.harness import sample
from streamtune.models import load_embedder, prepare_torch
from streamtune.settings import load_settings

# subject -> (question templates, values of their {x}).
SHOP = {
    "returns": (
        [
            "How many days do I have to return {x}?",
            "Can I send back {x}?",
            "What is your return policy for {x}?",
            "Do I get my money back if I return {x}?",
            "Is it possible to exchange {x} for something else?",
        ],
        ["a helmet", "an unused helmet", "my city bike", "a used bike", "an e-bike", "a bike lock", "a gift"],
    ),
    "refunds": (
        [
            "How long does a refund take for {x}?",
            "When will I see the refund for {x} on my card?",
            "Is the refund for {x} paid to my original payment method?",
            "My refund for {x} has not arrived, how long should it take?",
        ],
        ["my returned bike", "the returned helmet", "a cancelled order", "the gloves I sent back"],
    ),
    "shipping": (
        [
            "How much is delivery to {x}?",
            "How long does shipping to {x} take?",
            "Do you deliver to {x}?",
            "Is shipping to {x} free above a certain amount?",
            "Where do you ship orders to {x} from?",
        ],
        ["Oslo", "Sweden", "Denmark", "Tromsø", "Stavanger", "northern Norway"],
    ),
    "warranty": (
        [
            "Is the {x} covered by the warranty?",
            "How long is the warranty on the {x}?",
            "What happens if the {x} breaks after a year?",
            "Does the warranty pay for a worn {x}?",
        ],
        ["frame", "brakes", "chain", "gears", "derailleur", "crash damaged frame"],
    ),
    "hours": (
        [
            "When does the Bergen shop open on {x}?",
            "Is the store open on {x}?",
            "What time do you close on {x}?",
            "Can I visit the shop on {x}?",
        ],
        ["Saturday", "Sunday", "Monday", "a public holiday", "Friday evening"],
    ),
    "rentals": (
        [
            "What does it cost to rent {x} for a day?",
            "Is a helmet included when I rent {x}?",
            "By what time do I need to bring back {x}?",
            "Do you need a deposit to rent {x}?",
            "Can I book {x} for the weekend?",
        ],
        ["an electric bike", "a city bike", "two bikes", "a bike for my kid", "a cargo bike"],
    ),
    "repairs": (
        [
            "Can your workshop repair {x}?",
            "How much does it cost to fix {x}?",
            "How long does a repair of {x} take?",
            "Can I wait while you fix {x}?",
        ],
        ["a flat tyre", "a bike from another brand", "squeaky brakes", "a broken chain", "my gears"],
    ),
    "club": (
        [
            "Is the Fjordline Club free to join {x}?",
            "What discount do club members get {x}?",
            "Do club members get a free safety check {x}?",
            "How do I become a club member {x}?",
        ],
        ["this year", "online", "in the shop", "as a student", "for my family"],
    ),
    "support": (
        [
            "How can I contact customer service {x}?",
            "What is your support phone number {x}?",
            "Can I email support {x}?",
            "When does customer support answer {x}?",
        ],
        ["about my order", "about a delivery", "about a refund", "on weekends", "in the evening"],
    ),
    "location": (
        [
            "Where is your {x}?",
            "What is the address of the {x}?",
            "How do I get to the {x}?",
        ],
        ["flagship store", "Bergen shop", "workshop", "warehouse"],
    ),
}
COOKING = {
    "cooking": (
        [
            "How long should I bake {x}?",
            "What temperature do I cook {x} at?",
            "Can I freeze {x}?",
            "What spices go well with {x}?",
            "How do I keep {x} from getting dry?",
            "What can I use instead of butter in {x}?",
        ],
        ["salmon", "a chicken breast", "sourdough bread", "lasagna", "potatoes", "a chocolate cake", "meatballs"],
    ),
}
TAX = {
    "tax": (
        [
            "How do I deduct {x} on my tax return?",
            "When is the deadline to report {x}?",
            "Do I have to pay tax on {x}?",
            "Where in the tax return do I enter {x}?",
            "Can I correct {x} after filing my taxes?",
            "How is {x} taxed?",
        ],
        ["interest on my mortgage", "rental income", "a home office", "capital gains", "a pension", "foreign income"],
    ),
}
PHRASINGS = [
    "{q}",
    "Hi, {l}",
    "Hello! {q}",
    "Quick question: {l}",
    "{q} Thanks!",
    "Could you tell me: {l}",
    "I was wondering, {l}",
    "Please help, {l}",
    "{q} Thank you in advance.",
    "Hey there. {q}",
]


def questions(subjects: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """Every distinct question of ``subjects``: template x value x phrasing."""
    out: set[str] = set()
    for templates, values in subjects.values():
        for template, value, phrasing in itertools.product(templates, values, PHRASINGS):
            q = template.format(x=value)
            out.add(phrasing.format(q=q, l=q[0].lower() + q[1:]))
    return sorted(out)


def demo_questions() -> list[str]:
    return [pair["question"] for pair in sample("demo_qa.jsonl")]


def run_stream(conf: DriftConfig, reference: np.ndarray, stream: np.ndarray) -> list[tuple[int, bool]]:
    """(questions observed, fired) for every test run on ``stream``."""
    tracker = DriftTracker(conf)
    tracker.set_reference("t", reference, "manifest")
    tests = []
    for n, vector in enumerate(stream, start=1):
        reading = tracker.observe("t", vector)
        if reading is not None and reading.reason is None:
            tests.append((n, reading.drifted))
    return tests


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10, help="in-distribution streams per reference")
    parser.add_argument("--switches", type=int, default=20, help="switching streams per reference and subject")
    parser.add_argument("--switch-at", type=int, default=400, help="shop questions before the switch")
    parser.add_argument("--after", type=int, default=600, help="questions after the switch")
    parser.add_argument("--window", type=int, default=DriftConfig.window, help="drift.window to try")
    parser.add_argument("--every", type=int, default=DriftConfig.every, help="drift.every to try")
    parser.add_argument("--seed", type=int, default=25)
    args = parser.parse_args()
    conf = DriftConfig(window=args.window, every=args.every)
    settings = load_settings(config_files=[])
    prepare_torch(settings.embedding.torch_threads, settings.memory)
    embedder = load_embedder(settings)

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(embedder.encode(texts, batch_size=64, normalize_embeddings=True), dtype=np.float64)

    # A template may rebuild a training question word for word ("Is the store open on Sunday?"): not asked.
    shop_texts = [q for q in questions(SHOP) if q not in set(demo_questions())]
    cooking_texts, tax_texts = questions(COOKING), questions(TAX)
    begin = time.monotonic()
    shop, cooking, tax, demo = embed(shop_texts), embed(cooking_texts), embed(tax_texts), embed(demo_questions())
    print(
        f"{conf}\nquestions: shop {len(shop)}, cooking {len(cooking)}, tax {len(tax)}, demo QA {len(demo)} "
        f"(embedded in {time.monotonic() - begin:.0f}s)"
    )
    rng = np.random.default_rng(args.seed)
    # The simulations' results do not depend on speed; one BLAS thread makes them faster on 2 shared cores.
    limit = threadpool_limits(1)

    def references() -> dict[str, np.ndarray]:
        return {"demo QA": demo, "shop sample": shop[rng.choice(len(shop), conf.max_reference, replace=False)]}

    print("\n| reference | streams | questions each | windows tested | fired | rate | rate / significance |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("demo QA", "shop sample"):
        tests = []
        for _ in range(args.streams):
            tests += run_stream(conf, references()[name], shop[rng.permutation(len(shop))])
        fired = sum(f for _, f in tests)
        rate = fired / len(tests)
        print(
            f"| {name} | {args.streams} | {len(shop)} | {len(tests)} | {fired} | {rate:.4f} | "
            f"{rate / conf.significance:.2f} |"
        )

    print(
        "\n| reference | switch to | streams | fired before the switch | never fired | "
        "questions to fire: median | p90 | max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("demo QA", "shop sample"):
        for subject in ("cooking", "tax returns", "half tax returns"):
            delays, early, never = [], 0, 0
            for _ in range(args.switches):
                before = shop[rng.choice(len(shop), args.switch_at, replace=False)]
                if subject == "half tax returns":
                    after = np.where(
                        (rng.random(args.after) < 0.5)[:, None],
                        tax[rng.choice(len(tax), args.after)],
                        shop[rng.choice(len(shop), args.after)],
                    )
                else:
                    pool = cooking if subject == "cooking" else tax
                    after = pool[rng.choice(len(pool), args.after)]
                tests = run_stream(conf, references()[name], np.concatenate([before, after]))
                early += any(f for n, f in tests if n <= args.switch_at)
                firing = [n - args.switch_at for n, f in tests if f and n > args.switch_at]
                if firing:
                    delays.append(firing[0])
                else:
                    never += 1
            summary = (
                f"{statistics.median(delays):.0f} | {np.percentile(delays, 90):.0f} | {max(delays)}"
                if delays
                else "- | - | -"
            )
            print(f"| {name} | {subject} | {args.switches} | {early} | {never} | {summary} |")

    limit.unregister()
    one = shop_texts[0]
    embedder.encode([one], normalize_embeddings=True)
    yardstick = median_ms(lambda: embedder.encode([one], normalize_embeddings=True), 50)
    reference, window = shop[: conf.max_reference], shop[-conf.window :]
    test_rng = np.random.default_rng(0)

    def one_test() -> object:
        return mmd_test(reference, window, permutations=conf.permutations, rng=test_rng)

    test_ms = median_ms(one_test, 50)
    with threadpool_limits(1):
        test_one_thread_ms = median_ms(one_test, 50)
    small_ms = median_ms(lambda: mmd_test(demo, window, permutations=conf.permutations, rng=test_rng), 50)
    tracker = DriftTracker(replace(conf, every=10**9))  # no test comes due: observe alone
    tracker.set_reference("t", reference, "manifest")
    started = time.perf_counter()
    for vector in shop[:2000]:
        tracker.observe("t", vector)
    observe_us = (time.perf_counter() - started) / 2000 * 1e6
    print(
        f"\n| cost | time | ratio to embedding one question ({yardstick:.1f} ms) |\n| --- | --- | --- |\n"
        f"| one test, reference {len(reference)} x window {len(window)}, {conf.permutations} permutations | "
        f"{test_ms:.1f} ms | {test_ms / yardstick:.2f} |\n"
        f"| the same, numpy's BLAS on one thread | {test_one_thread_ms:.1f} ms | "
        f"{test_one_thread_ms / yardstick:.2f} |\n"
        f"| one test, demo QA reference ({len(demo)}) | {small_ms:.1f} ms | {small_ms / yardstick:.2f} |\n"
        f"| `observe` without a test | {observe_us:.1f} µs | {observe_us / 1000 / yardstick:.4f} |\n"
        f"| per question, a test every {conf.every} | {test_ms / conf.every:.2f} ms | "
        f"{test_ms / conf.every / yardstick:.3f} |"
    )
    print(f"({time.monotonic() - begin:.0f}s since the questions were embedded)")


if __name__ == "__main__":
    main()
