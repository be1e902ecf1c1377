"""PII scrubbing benchmark: time per MB on adversarial bait and on prose, and how it grows with the input.

    .venv/flink/bin/python bench/scrub.py [--mb 1] [--repeat 3]

Yardstick, measured in the same run: ``len(re.findall(r"\\w+", text))`` over the prose MB, one linear pass of
Python's regex engine over the same amount of text. Each kind of text (prose with some PII, then bait aimed
at each pattern: long runs of letters, dots, hyphens, digits, digit groups, '@', '+', '(', IBAN- and
card-shaped runs, phone-shaped numbers for phonenumbers, random junk) is scrubbed with the default
``Scrubber``; the figure is the best of ``--repeat`` runs, in ms per MB, and its ratio to the yardstick.

Growth: the old e-mail pattern (kept below for comparison, quadratic) against the new ``scrub`` on 2k, 4k
and 8k characters of ``a.a.a...`` bait, then the new ``scrub`` on a quarter and a whole of each MB (ratio
about 4 when linear). The last line is JSON with every figure. Takes well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from collections.abc import Callable
from functools import partial

from streams.pii import Scrubber

# streams/pii.py before issue 8: every start position inside a run of local-part characters rescans the run.
OLD_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")

PROSE_WORDS = (
    "the refund for your order was shipped on Monday and the parcel should arrive within three working days "
    "please keep the receipt warranty claims need the invoice number customer service is open weekdays "
    "version 1.2.3 fixed the login issue about 30 days ago while prices rose 4.5 % in 2025"
)
WORDS = PROSE_WORDS.split()
PII = (
    "mail jane.doe+billing@mail.acme.co.uk",
    "call +1 415-555-0132",
    "call 020 7946 0958",
    "ring 22 12 34 56",
    "card 4111 1111 1111 1111",
    "iban DE89 3704 0044 0532 0130 00",
    "order 2026112100123 from 2026-11-21",
)


def _repeat(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _joined(make: Callable[[random.Random], str], size: int, sep: str) -> str:
    rng = random.Random(8)
    parts: list[str] = []
    total = 0
    while total < size:
        part = make(rng) + sep
        parts.append(part)
        total += len(part)
    return "".join(parts)[:size]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _prose(rng: random.Random) -> str:
    sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
    return sentence + (" " + rng.choice(PII) + "." if rng.random() < 0.1 else "")


def texts(size: int) -> dict[str, str]:
    """Each kind of text, ``size`` characters long."""
    return {
        "prose": _joined(_prose, size, " "),
        "letters aaaa": _repeat("a", size),
        "a.a.a. (no @)": _repeat("a.", size),
        "a-a-a- (no @)": _repeat("a-", size),
        "1.1.1. (no @)": _repeat("1.", size),
        "x@a.a.a. (no TLD)": "x@" + _repeat("a.", size - 2),
        "a@a-a-a- (no dot)": "a@" + _repeat("a-", size - 2),
        "a@a@a@": _repeat("a@", size),
        "a.a@a.a@": _repeat("a.a@", size),
        "e-mails a@b.cd": _repeat("a@b.cd ", size),
        "%+%+": _repeat("%+", size),
        "digits 1111": _repeat("1", size),
        "digit groups 1 1 1": _repeat("1 ", size),
        "+1+1+1": _repeat("+1", size),
        "+ and 20 digits": _repeat("+" + "1" * 20 + " ", size),
        "(12) (12)": _repeat("(12) ", size),
        "IBAN-ish AB12 ": _repeat("AB12 ", size),
        "card-ish 19 digits x": _repeat("4111 1111 1111 1111 111x ", size),
        "spaces": _repeat(" ", size),
        "phone-shaped dd dd dd dd;": _joined(lambda r: " ".join(_digits(r, 2) for _ in range(4)), size, "; "),
        "valid GB 020 7946 dddd,": _joined(lambda r: "020 7946 " + _digits(r, 4), size, ", "),
        "random a1 .-@+()": _joined(lambda r: "".join(r.choice("a1 .-@+()") for _ in range(64)), size, ""),
    }


def _best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="size of each text in MB (10**6 characters)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    mb = size / 1_000_000
    scrubber = Scrubber()
    kinds = texts(size)

    yardstick = _best_ms(lambda: len(re.findall(r"\w+", kinds["prose"])), 5) / mb
    print(f"yardstick: len(re.findall(r'\\w+', prose)) {yardstick:.1f} ms/MB")

    per_mb: dict[str, float] = {}
    growth: dict[str, float] = {}
    print(f"{'text':28} {'ms/MB':>9} {'ratio':>7} {'growth at 4x input':>19}")
    for name, text in kinds.items():
        whole = _best_ms(partial(scrubber.scrub, text), args.repeat)
        quarter = _best_ms(partial(scrubber.scrub, text[: size // 4]), args.repeat)
        per_mb[name] = whole / mb
        growth[name] = whole / quarter
        print(f"{name:28} {per_mb[name]:9.0f} {per_mb[name] / yardstick:7.1f} {growth[name]:18.1f}x")

    print("a.a.a... bait     old e-mail regex   new scrub (whole)")
    old: dict[str, float] = {}
    new: dict[str, float] = {}
    for chars in (2000, 4000, 8000):
        bait = _repeat("a.", chars)
        old[str(chars)] = _best_ms(partial(OLD_EMAIL.sub, "[EMAIL]", bait), args.repeat)
        new[str(chars)] = _best_ms(partial(scrubber.scrub, bait), args.repeat)
        print(f"{chars:>6} chars     {old[str(chars)]:10.2f} ms      {new[str(chars)]:10.3f} ms")

    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}",
                "cpus": os.cpu_count(),
                "mb": mb,
                "yardstick": "len(re.findall(r'\\w+', prose))",
                "yardstick_ms_per_mb": round(yardstick, 1),
                "ms_per_mb": {k: round(v, 1) for k, v in per_mb.items()},
                "ratio": {k: round(v / yardstick, 2) for k, v in per_mb.items()},
                "quarter_to_whole": {k: round(v, 2) for k, v in growth.items()},
                "old_email_regex_ms": {k: round(v, 2) for k, v in old.items()},
                "new_scrub_ms": {k: round(v, 3) for k, v in new.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
