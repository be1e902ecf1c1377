"""Train on the prompt you serve: held-out exact match / token F1 of an adapter trained on examples that carry
their retrieved context, against one trained on the same examples without it, both scored as ``serve``
prompts (system prompt + numbered context + question), with the base model as the yardstick.

    .venv/ml/bin/python bench/context.py [--steps 30] [--top-k 2] [--qlora]

Same base model (the configured one, SmolLM2-135M-Instruct by default), same pairs, steps, batch size,
learning rate, LoRA settings and seed for both adapters, trained and scored through ``training.trainer``
(``train`` and ``evaluate``) as a refresh does; the only difference is the examples' ``context``. Data: the
bundled demo QA pairs; a pair's context is the top-k bundled demo documents by the embedding model's cosine
similarity to its question (what a retrieval over them returns: each document is one chunk). Every third
pair is held out (7 of 23); the other 16 are trained on. The held-out answers are facts no training answer
states, so an adapter can only get them from the context.

Plain LoRA on the full-precision base by default: faster on CPU at this size, and 4-bit is not what is
compared here (``--qlora`` for the refresh's 4-bit). The default run (30 steps of batch 4 per adapter, then
three scorings) took 7 minutes on 2 CPU cores.
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

from streamtune.contracts import ChatMessage, ContextPassage, TrainingExample
from streamtune.harness import sample
from streamtune.models import base_model_source, load_embedder
from streamtune.prompt import PromptFormat
from streamtune.settings import Settings, load_settings


def retrieved(settings: Settings, questions: list[str], documents: list[dict[str, Any]], k: int) -> list[list[int]]:
    """Per question, the indexes of its top-``k`` documents by cosine similarity of normalised embeddings."""
    embedder = load_embedder(settings)
    docs = embedder.encode([f"{d['title']}: {d['text']}" for d in documents], normalize_embeddings=True)
    asked = embedder.encode(questions, normalize_embeddings=True)
    scores = asked @ docs.T
    return [sorted(range(len(documents)), key=lambda j: (-float(row[j]), j))[:k] for row in scores]


def example(i: int, pair: dict[str, Any], context: list[ContextPassage] | None) -> TrainingExample:
    return TrainingExample(
        example_id=f"bench-{i}",
        source_event_id=f"bench-{i}",
        messages=[
            ChatMessage(role="user", content=pair["question"]),
            ChatMessage(role="assistant", content=pair["answer"]),
        ],
        context=context,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top-k", type=int, default=2, help="documents of context per pair")
    parser.add_argument("--qlora", action="store_true", help="4-bit base as the refresh trains (slower on CPU)")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from training.trainer import evaluate, load_model, quantization_support, train

    begin = time.monotonic()
    base = load_settings()
    settings = base.training.model_copy(update={"max_steps": args.steps, "batch_size": 4})
    torch.set_num_threads(settings.torch_threads)
    quantize = args.qlora and quantization_support()[0]
    source = base_model_source(base)
    tokenizer = AutoTokenizer.from_pretrained(source)
    form = PromptFormat.of(base)

    # load data: each pair with the documents a retrieval returns for its question
    documents, pairs = sample("demo_documents.jsonl"), sample("demo_qa.jsonl")
    top = retrieved(base, [p["question"] for p in pairs], documents, args.top_k)
    contexts = [
        [
            ContextPassage(
                doc_id=documents[j]["doc_id"],
                chunk_id=f"{documents[j]['doc_id']}#0",
                title=documents[j]["title"],
                text=documents[j]["text"],
            )
            for j in ranked
        ]
        for ranked in top
    ]
    with_context = [example(i, p, contexts[i]) for i, p in enumerate(pairs)]
    without_context = [example(i, p, None) for i, p in enumerate(pairs)]
    held = [i for i in range(len(pairs)) if i % 3 == 2]
    held_out = [with_context[i] for i in held]  # scored as served: with their retrieved context
    answer_in_context = sum(
        any(passage.doc_id in _source_docs(pairs[i], documents) for passage in contexts[i]) for i in held
    )
    print(
        f"{len(pairs) - len(held)} pairs trained on, {len(held)} held out; top-{args.top_k} documents of context; "
        f"the held-out answer's document retrieved for {answer_in_context}/{len(held)}",
        flush=True,
    )

    results: dict[str, dict[str, float]] = {}
    tokens = settings.eval_max_new_tokens

    def scored(name: str, key: str, adapter: Path | None) -> None:
        model = load_model(source, settings, quantize=quantize, adapter=adapter, trainable=False)
        metrics = evaluate(model, tokenizer, held_out, tokens, prompt=form)
        del model
        gc.collect()
        results[key] = {k: round(v, 4) for k, v in metrics.as_dict().items()}
        print(
            f"{name}: held-out exact match {metrics.exact_match:.3f}, token F1 {metrics.token_f1:.3f}, "
            f"loss {metrics.loss:.3f} ({metrics.examples} examples; {time.monotonic() - begin:.0f} s so far)",
            flush=True,
        )

    # train both on the same pairs, steps and seed; score both the same way
    with tempfile.TemporaryDirectory() as tmp:
        for name, examples in (("with context", with_context), ("without context", without_context)):
            trainable = [e for i, e in enumerate(examples) if i not in held]
            model, figures = train(
                source,
                tokenizer,
                trainable,
                settings,
                quantize=quantize,
                parent=None,
                work_dir=Path(tmp) / name,
                say=lambda _: None,
                prompt=form,
            )
            model.save_pretrained(str(Path(tmp) / name / "adapter"))
            del model
            gc.collect()
            print(
                f"trained {name}: {figures.steps} steps, {figures.tokens} tokens, {figures.tokens_per_second:.1f} "
                f"tokens/s, final loss {figures.losses[-1][1]:.3f}",
                flush=True,
            )
            scored(f"adapter trained {name}", name.replace(" ", "_"), Path(tmp) / name / "adapter")
    scored("base model (yardstick)", "base_model_alone", None)

    print(
        json.dumps(
            {
                "machine": f"{platform.node()} {platform.machine()}",
                "base_model": base.models.base_model,
                "quantization": "nf4+double-quant" if quantize else "none",
                "steps": args.steps,
                "batch_size": settings.batch_size,
                "top_k": args.top_k,
                "train_pairs": len(pairs) - len(held),
                "held_out": len(held),
                "torch_threads": settings.torch_threads,
                "seconds": round(time.monotonic() - begin),
                "held_out_scores": results,
            }
        )
    )


def _source_docs(pair: dict[str, Any], documents: list[dict[str, Any]]) -> list[str]:
    """The documents that state the pair's answer: those sharing its rarest content words (a rough check, for
    the report line only: it says how often retrieval put the answer in the context)."""
    words = {w.strip(".,?").lower() for w in pair["answer"].split() if len(w.strip(".,?")) > 3}
    best = max(documents, key=lambda d: len(words & {w.strip(".,?").lower() for w in d["text"].split()}))
    return [best["doc_id"]]


if __name__ == "__main__":
    main()
