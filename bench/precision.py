"""Does training in bf16 on CPU change what the gate decides? The refresh's candidate trained in fp32 and in
bf16 autocast (``training.bf16_on_cpu``), each scored by the gate against the base model on the same held-out
and anchor examples, over several seeds.

    OMP_WAIT_POLICY=PASSIVE .venv/ml/bin/python bench/precision.py [--steps 60] [--seeds 42 43 44]

Yardstick: the fp32 candidate of the same seed, in the same run (what every version was trained in before
``bf16_on_cpu``). Data: the bundled demo QA pairs, split by ``training.data.split`` as a refresh splits them;
training, scoring and the rule are the refresh's own (``train_candidate``, ``gate.score``, ``gate.decide``).
Printed per seed and precision: the verdict, held-out loss / exact match / token F1, anchor loss, tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from common import cpus, demo_examples

from streamtune.prompt import PromptFormat
from streamtune.settings import load_settings
from training.data import load_anchor, split
from training.gate import decide, score
from training.trainer import cpu_has_bf16, train_candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (training.max_steps' default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()

    base = load_settings()
    anchor = load_anchor(base.training.anchor_file)
    form = PromptFormat.of(base)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            examples = demo_examples(f"seed{seed}")
            train_set, held_out = split(examples, base.training.held_out_percent, seed)
            baseline = None
            for bf16 in (False, True):
                training = base.training.model_copy(update={"seed": seed, "max_steps": args.steps, "bf16_on_cpu": bf16})
                settings = base.model_copy(update={"training": training})
                work = Path(tmp) / f"{seed}-{'bf16' if bf16 else 'fp32'}"
                candidate = train_candidate(settings, train_set, None, work, lambda _: None, prompt=form)
                ours = score(settings, candidate, candidate.adapter_dir, held_out, anchor, "candidate", lambda _: None)
                if baseline is None:  # the base model's scores do not depend on the candidate's precision
                    baseline = score(settings, candidate, None, held_out, anchor, "base", lambda _: None)
                verdict = decide(
                    ours,
                    baseline,
                    training.anchor_tolerance,
                    quality_tolerance=training.quality_tolerance,
                    compared_with="base model",
                )
                row = {
                    "seed": seed,
                    "precision": "bf16" if bf16 else "fp32",
                    "promoted": verdict.promoted,
                    "reason": verdict.reason,
                    "held_out_loss": round(ours.held_out.loss, 4),
                    "exact_match": round(ours.held_out.exact_match, 3),
                    "token_f1": round(ours.held_out.token_f1, 3),
                    "anchor_loss": round(ours.anchor.loss, 4),
                    "base_held_out_loss": round(baseline.held_out.loss, 4),
                    "tokens_per_s": round(candidate.result.tokens_per_second, 1),
                    "held_out_examples": len(held_out),
                }
                rows.append(row)
                print(
                    f"seed {seed} {row['precision']}: {'promoted' if verdict.promoted else 'rejected'} "
                    f"({verdict.reason}); held-out loss {row['held_out_loss']} (base {row['base_held_out_loss']}) "
                    f"EM {row['exact_match']} F1 {row['token_f1']}; anchor loss {row['anchor_loss']}; "
                    f"{row['tokens_per_s']} tokens/s",
                    flush=True,
                )
    same = all(
        a["promoted"] == b["promoted"] for a, b in zip(rows[::2], rows[1::2], strict=True)
    )  # fp32 then bf16, per seed
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}, {cpus()} cpus, bf16 instructions {cpu_has_bf16()}",
                "load_average_1min": round(os.getloadavg()[0], 2),
                "steps": args.steps,
                "verdicts_equal": same,
                "runs": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
