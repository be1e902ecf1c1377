"""Learning from feedback on a stream: the base model, against an adapter trained by SFT on what the loop
collects, against the same SFT followed by the preference step (trl's KTO on the rated-down answers), scored
by token F1 on held-out questions the loop never saw.

    .venv/ml/bin/python bench/feedback.py [--steps 30] [--preference-steps 20] [--top-k 2]

The stream, built from the bundled demo QA pairs (each with the top-k demo documents a retrieval returns for
its question, as context):

- 8 pairs arrive as vetted ``qa.recorded`` examples (demonstrations);
- 8 other questions are asked to the base model (the tenant's first canary is judged against it) and each
  answer is rated against the known truth, as a user who knows it would: token F1 >= 0.5 is a thumbs up (a
  demonstration of the served answer, labelled desirable); below, a thumbs down, two in three of them with
  the true answer as the correction (a preference pair), one in three without (a rating);
- the other 7 pairs are held out: never in the stream, scored by each model with their context.

Both adapters are trained by ``training.trainer.train_candidate`` as a refresh trains (same examples, steps,
seed; the preference arm adds ``feedback``); the base model is the yardstick. Plain LoRA on the
full-precision base (faster on CPU at this size); validation slice off (the comparison is the preference
step, not early stopping).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from context import example, retrieved  # bench/context.py: the same pairs, documents and retrieval

from streamtune.contracts import ContextPassage, TrainingExample
from streamtune.harness import sample
from streamtune.models import base_model_source
from streamtune.prompt import PromptFormat
from streamtune.settings import load_settings


def answers(model: Any, tokenizer: Any, examples: list[TrainingExample], form: PromptFormat, tokens: int) -> list[str]:
    """Greedy answers to the examples' questions, prompted as ``serve`` prompts."""
    import torch

    from training.trainer import conversation_rows

    model.eval()
    out = []
    with torch.no_grad():
        for row in conversation_rows(examples, form, tokenizer):
            ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
            generated = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            out.append(tokenizer.decode(generated[0][len(ids) :], skip_special_tokens=True).strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--preference-steps", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from training.trainer import evaluate, load_model, token_f1, train_candidate

    begin = time.monotonic()
    base = load_settings()
    training = base.training.model_copy(
        update={
            "max_steps": args.steps,
            "batch_size": 4,
            "quantize_4bit": False,
            "validation_percent": 0,
            "preference_steps": args.preference_steps,
            "min_preference_examples": 1,
        }
    )
    settings = base.model_copy(update={"training": training})
    torch.set_num_threads(training.torch_threads)
    source = base_model_source(base)
    tokenizer = AutoTokenizer.from_pretrained(source)
    form = PromptFormat.of(base)
    tokens = training.eval_max_new_tokens

    documents, pairs = sample("demo_documents.jsonl"), sample("demo_qa.jsonl")
    top = retrieved(base, [p["question"] for p in pairs], documents, args.top_k)
    stream = [
        example(
            i,
            p,
            [
                ContextPassage(
                    doc_id=documents[j]["doc_id"],
                    chunk_id=f"{documents[j]['doc_id']}#0",
                    title=documents[j]["title"],
                    text=documents[j]["text"],
                )
                for j in top[i]
            ],
        )
        for i, p in enumerate(pairs)
    ]
    held = [e for i, e in enumerate(stream) if i % 3 == 2]
    rest = [e for i, e in enumerate(stream) if i % 3 != 2]
    vetted, asked = rest[:8], rest[8:16]

    # the feedback: the base model answers, a user who knows the truth rates
    model = load_model(source, training, quantize=False, adapter=None, trainable=False)
    served = answers(model, tokenizer, asked, form, tokens)
    base_scores = evaluate(model, tokenizer, held, tokens, prompt=form)
    del model
    gc.collect()
    liked: list[TrainingExample] = []
    disliked: list[TrainingExample] = []
    for question, answer in zip(asked, served, strict=True):
        truth = question.messages[-1].content
        said = [*question.messages[:-1], question.messages[-1].model_copy(update={"content": answer or "(empty)"})]
        if token_f1(answer, truth) >= 0.5:
            liked.append(question.model_copy(update={"messages": said, "label": True}))
        elif len(disliked) % 3 == 2:
            disliked.append(question.model_copy(update={"messages": said, "kind": "rating", "label": False}))
        else:
            disliked.append(question.model_copy(update={"kind": "preference", "rejected": answer or "(empty)"}))
    corrections = sum(1 for e in disliked if e.kind == "preference")
    print(
        f"stream: {len(vetted)} vetted pairs; {len(asked)} questions answered by the base model and rated: "
        f"{len(liked)} up, {corrections} down with a correction, {len(disliked) - corrections} down without; "
        f"{len(held)} held out",
        flush=True,
    )

    results: dict[str, dict[str, float]] = {"base model (yardstick)": base_scores.as_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, feedback in (("SFT", []), ("SFT + preference step (KTO)", disliked)):
            candidate = train_candidate(
                settings,
                [*vetted, *liked],
                None,
                Path(tmp) / name.split()[0] / str(len(feedback)),
                say=lambda line: print(line, flush=True),
                prompt=form,
                feedback=feedback,
            )
            model = load_model(source, training, quantize=False, adapter=candidate.adapter_dir, trainable=False)
            results[name] = evaluate(model, tokenizer, held, tokens, prompt=form).as_dict()
            del model, candidate
            gc.collect()
    for name, scores in results.items():
        ratio = scores["token_f1"] / max(base_scores.token_f1, 1e-9)
        print(
            f"{name:<30} held-out token F1 {scores['token_f1']:.3f} (x{ratio:.2f} of the base), "
            f"exact match {scores['exact_match']:.3f}, loss {scores['loss']:.3f}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}",
                "base_model": base.models.base_model,
                "steps": args.steps,
                "preference_steps": args.preference_steps,
                "torch_threads": training.torch_threads,
                "seconds": round(time.monotonic() - begin),
                "held_out": len(held),
                "scores": {k: {m: round(v, 4) for m, v in s.items()} for k, s in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
