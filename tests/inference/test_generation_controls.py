"""The OpenAI generation controls (``max_tokens``, ``stop``, ``temperature``, ``top_p``, ``seed``) per request and
per row of a mixed batch: in the batcher, through the scheduler's stream, on the static path, at the gateway's
door (bad input is a 400 naming the field, and nothing reaches serve), and end to end on the real stack."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.adapters import AdapterBook, AdapterCache
from inference.batching import Batcher, Row, Sampling
from inference.engine import Answerer
from inference.http import create_app
from inference.http.auth import hash_key
from inference.http.feedback import CompletionMemory
from inference.http.metrics import GatewayMetrics
from inference.metrics import ServeMetrics
from inference.scheduler import Scheduler, _held
from streamtune.contracts import Answer, Query, Usage
from streamtune.harness import Deployment, tiny_gateway, tiny_serving, wait_for
from streamtune.settings import HttpSettings, InferenceSettings, ModelSettings, Settings

PROMPTS = [
    "What is the refund window?",
    "Orders ship from Lisbon within two business days. Where do orders ship from?",
    "Bees make",
    "The capital of France is Paris. A week has seven days. What is the capital of France?",
]
SEEDED = Sampling(temperature=1.0, top_p=0.9, seed=1234)


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> tuple[Any, Any]:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def _alone(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return [t for t in out[0][ids["input_ids"].shape[1] :].tolist() if t != tokenizer.eos_token_id]


def _batcher(model: Any, tokenizer: Any) -> Batcher:
    return Batcher(
        lambda: model,
        eos_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
        mixed_adapters=lambda: False,
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )


def _row(tokenizer: Any, key: Any, prompt: str, budget: int, sampling: Sampling | None = None) -> Row:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return Row(key, ids, "__base__", budget, sampling=sampling or Sampling())


def _drain(batcher: Batcher, rows: list[Row], join_at: dict[int, list[Row]] | None = None) -> None:
    join_at = join_at or {}
    batcher.add(rows)
    step = 0
    while len(batcher) or any(k >= step for k in join_at):
        batcher.add(join_at.get(step, []))
        batcher.step()
        step += 1


# -- the batcher -----------------------------------------------------------------------------------------------
def test_a_mixed_batch_gives_each_row_what_its_own_controls_give(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    greedy = _row(tokenizer, "greedy", PROMPTS[0], 10)
    seeded = _row(tokenizer, "seeded", PROMPTS[1], 10, SEEDED)
    short = _row(tokenizer, "short", PROMPTS[3], 3)
    _drain(_batcher(model, tokenizer), [greedy, seeded, short])

    assert greedy.generated == _alone(model, tokenizer, PROMPTS[0], 10)  # greedy rows as they always were
    assert short.generated == _alone(model, tokenizer, PROMPTS[3], 3) and len(short.generated) == 3
    assert short.finish_reason == "length"

    alone = _row(tokenizer, "alone", PROMPTS[1], 10, SEEDED)
    _drain(_batcher(model, tokenizer), [alone])
    # another composition: an unseeded sampling row beside it, a greedy row joining mid-way
    other = _row(tokenizer, "other", PROMPTS[1], 10, SEEDED)
    noise = _row(tokenizer, "noise", PROMPTS[2], 6, Sampling(temperature=1.5))
    late = _row(tokenizer, "late", PROMPTS[0], 4)
    _drain(_batcher(model, tokenizer), [noise, other], {2: [late]})
    assert seeded.generated == alone.generated == other.generated
    assert seeded.generated != _alone(model, tokenizer, PROMPTS[1], 10)  # it sampled: not the greedy tokens

    again = _row(tokenizer, "again", PROMPTS[1], 10, Sampling(temperature=1.0, seed=99))
    _drain(_batcher(model, tokenizer), [again])
    assert again.generated != seeded.generated  # another seed, other draws


def test_a_nucleus_of_one_token_is_the_greedy_choice(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    rows = [_row(tokenizer, i, p, 8, Sampling(temperature=2.0, top_p=1e-9)) for i, p in enumerate(PROMPTS)]
    _drain(_batcher(model, tokenizer), rows)
    for row, prompt in zip(rows, PROMPTS, strict=True):
        assert row.generated == _alone(model, tokenizer, prompt, 8), prompt


def test_a_stop_sequence_ends_the_row_at_the_token_that_completes_it(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    text = tokenizer.decode(_alone(model, tokenizer, PROMPTS[3], 16), skip_special_tokens=True)
    stop = _stop_in(text)
    row = _row(tokenizer, "stop", PROMPTS[3], 16)
    row.stop = ("never appears", stop)
    _drain(_batcher(model, tokenizer), [row])
    decoded = tokenizer.decode(row.generated, skip_special_tokens=True)
    assert row.finish_reason == "stop" and row.stop_at == text.find(stop) == decoded.find(stop)
    assert stop not in tokenizer.decode(row.generated[:-1], skip_special_tokens=True)  # not a token later
    with pytest.raises(ValueError, match="decode"):
        Batcher(lambda: model, eos_ids=[2], pad_id=0, mixed_adapters=lambda: False).add([row])


def _stop_in(text: str) -> str:
    """Two printable ASCII characters from the second half of ``text`` (the tiny model's text is noise)."""
    for start in range(len(text) // 2, len(text) - 1):
        piece = text[start : start + 2]
        if piece.isascii() and piece.isprintable() and not any(c.isspace() for c in piece):
            return piece
    raise AssertionError(f"no usable stop sequence in {text!r}")


def test_a_tail_that_may_become_a_stop_sequence_is_held_back() -> None:
    assert _held("Hello\nUs", ["\nUser:"]) == "Hello"
    assert _held("Hello\n", ["\nUser:", "lo\nX"]) == "Hel"  # the longest tail that could start one
    assert _held("Hello", ["\nUser:"]) == "Hello"
    assert _held("Hello", []) == "Hello"


# -- the scheduler and the static path, on the real answerer without retrieval ----------------------------------
class _Unretrieved(Answerer):
    """The real answerer on the tiny model, without Weaviate: the prompt is the question itself (retrieval is not
    the subject here)."""

    def __init__(self, settings: Settings, model: Any, tokenizer: Any) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.model_name = "tiny"
        self.book = AdapterBook(settings.adapters_dir, settings.models.base_model)
        self.cache = AdapterCache(model, settings.inference.max_loaded_adapters)
        self.prompt_prefix: list[int] = []  # the prompt is the question: no beginning that all prompts share

    def _embed_and_retrieve(self, items: list[Any]) -> None:
        for item in items:
            item.prompt = item.query.question


def _answerer(tiny: tuple[Any, Any], tiny_model: Path, tmp_path: Path, batching: str) -> _Unretrieved:
    settings = Settings(
        models=ModelSettings(base_model=str(tiny_model)),
        inference=InferenceSettings(max_new_tokens=16, torch_threads=1, batching=batching),
        training={"adapters_dir": str(tmp_path / "adapters")},
    )
    return _Unretrieved(settings, *tiny)


def _serve(answerer: Answerer, queries: list[Query]) -> tuple[dict[str, Answer], dict[str, list[str]]]:
    """The answers and streamed pieces of ``queries`` through the continuous scheduler."""
    pieces: dict[str, list[str]] = {q.query_id: [] for q in queries}

    def delta(query: Query, seq: int, text: str) -> None:
        assert seq == len(pieces[query.query_id])
        pieces[query.query_id].append(text)

    scheduler = Scheduler(answerer, on_delta=delta)
    answers = scheduler.admit(queries, [time.monotonic()] * len(queries))
    while scheduler.busy:
        answers += scheduler.step()
    return {a.query_id: a for a in answers}, pieces


def test_a_streamed_answer_never_shows_its_stop_sequence(
    tiny: tuple[Any, Any], tiny_model: Path, tmp_path: Path
) -> None:
    answerer = _answerer(tiny, tiny_model, tmp_path, "continuous")
    whole = _serve(answerer, [Query(query_id="whole", question=PROMPTS[3])])[0]["whole"]
    stop = _stop_in(whole.answer)
    cut, pieces = _serve(
        answerer,
        [
            Query(query_id="cut", question=PROMPTS[3], stream=True, stop=[stop, "never appears"]),
            Query(query_id="beside", question=PROMPTS[0], stream=True, temperature=0.8, seed=7),
        ],
    )
    answer = cut["cut"]
    assert answer.answer == whole.answer[: whole.answer.find(stop)].rstrip()
    assert answer.finish_reason == "stop" and stop not in answer.answer
    assert "".join(pieces["cut"]) == answer.answer and not any(stop in piece for piece in pieces["cut"])
    assert "".join(pieces["beside"]) == cut["beside"].answer
    # each answer counts the pieces that came before it (a reader holds it until they have come)
    assert (answer.pieces, cut["beside"].pieces, whole.pieces) == (len(pieces["cut"]), len(pieces["beside"]), 0)
    assert answer.usage is not None and whole.usage is not None
    assert answer.usage.completion_tokens < whole.usage.completion_tokens


def test_a_row_whose_deadline_passes_while_it_generates_stops_and_frees_its_slot(
    tiny: tuple[Any, Any], tiny_model: Path, tmp_path: Path
) -> None:
    answerer = _answerer(tiny, tiny_model, tmp_path, "continuous")
    later = datetime.now(UTC) + timedelta(hours=1)
    queries = [Query(query_id=q, question=PROMPTS[3], deadline=later) for q in ("abandoned", "awaited")]
    scheduler = Scheduler(answerer)
    answers = scheduler.admit(queries, [time.monotonic()] * 2)
    answers += scheduler.step()
    assert not answers and len(scheduler.batcher) == 2  # both generating
    (abandoned,) = [r.item for r in scheduler.running.values() if r.item.query.query_id == "abandoned"]
    abandoned.query = abandoned.query.model_copy(update={"deadline": datetime.now(UTC) - timedelta(seconds=1)})
    answers = scheduler.step()
    assert [(a.query_id, a.error.code if a.error else None) for a in answers][:1] == [
        ("abandoned", "deadline_exceeded")
    ]
    assert len(scheduler.batcher) <= 1  # its slot is free at once; no more tokens spent on it
    while scheduler.busy:
        answers += scheduler.step()
    assert [a.query_id for a in answers] == ["abandoned", "awaited"] and answers[1].error is None
    assert answerer.metrics.generation_cut.labels("default")._value.get() == 1
    assert answerer.metrics.deadline_exceeded.labels("default")._value.get() == 1


def test_the_static_path_honours_the_same_controls(tiny: tuple[Any, Any], tiny_model: Path, tmp_path: Path) -> None:
    continuous = _answerer(tiny, tiny_model, tmp_path, "continuous")
    whole = _serve(continuous, [Query(query_id="whole", question=PROMPTS[3])])[0]["whole"]
    queries = [
        Query(query_id="greedy", question=PROMPTS[0]),
        Query(query_id="short", question=PROMPTS[3], max_tokens=3),
        Query(query_id="stop", question=PROMPTS[3], stop=[_stop_in(whole.answer)]),
        Query(query_id="seeded", question=PROMPTS[1], temperature=1.0, top_p=0.9, seed=1234),
        Query(query_id="capped", question=PROMPTS[2], max_tokens=10_000),
    ]
    served = _serve(continuous, queries)[0]
    static = {a.query_id: a for a in _answerer(tiny, tiny_model, tmp_path, "static").answer_batch(queries)}
    for query in queries:
        ours, theirs = static[query.query_id], served[query.query_id]
        assert (ours.answer, ours.finish_reason, ours.usage) == (theirs.answer, theirs.finish_reason, theirs.usage)
    short = static["short"].usage
    assert short is not None and short.completion_tokens == 3 and static["short"].finish_reason == "length"
    assert static["stop"].finish_reason == "stop"
    assert static["capped"].usage is not None and static["capped"].usage.completion_tokens <= 16


# -- the gateway's door, without the stack ---------------------------------------------------------------------
KEY = "key-acme"
QUESTION = "What is the refund window?"


class _Gateway:
    """What the app needs of a gateway; ``ask`` records the queries that would reach serve."""

    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.completions = CompletionMemory(16)
        self.open_completions = 0
        self.asked: list[Query] = []

    async def ask(self, query: Query) -> AsyncGenerator[Answer, None]:
        self.asked.append(query)
        yield Answer(
            query_id=query.query_id,
            tenant=query.tenant,
            answer="30 days",
            usage=Usage(prompt_tokens=9, completion_tokens=2),
            finish_reason="stop",
        )


@pytest.fixture
def door() -> Iterator[tuple[TestClient, _Gateway]]:
    gateway = _Gateway()
    settings = Settings(http=HttpSettings(api_keys={hash_key(KEY): ["acme"]}))
    with TestClient(create_app(settings, gateway=gateway)) as client:  # type: ignore[arg-type]
        yield client, gateway


def _post(client: TestClient, **extra: Any) -> Any:
    body = {"model": "acme", "messages": [{"role": "user", "content": QUESTION}], **extra}
    return client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "x"}, "seed"),
        ({"seed": "3"}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"n": 2}, "n"),
    ],
)
def test_bad_generation_controls_get_a_400_naming_the_field_and_reach_nobody(
    door: tuple[TestClient, _Gateway], extra: dict[str, Any], param: str
) -> None:
    client, gateway = door
    response = _post(client, **extra)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param) and error["message"]
    assert gateway.asked == []


def test_good_generation_controls_go_into_the_query(door: tuple[TestClient, _Gateway]) -> None:
    client, gateway = door
    response = _post(client, max_completion_tokens=5, max_tokens=5, stop="\n", temperature=0.7, top_p=0.9, seed=-4)
    assert response.status_code == 200, response.text
    _post(client, max_tokens=10**9, stop=["a", "b"], temperature=0, top_p=1)  # above the cap: accepted, capped
    _post(client)
    first, second, plain = gateway.asked
    assert (first.max_tokens, first.stop, first.temperature, first.top_p, first.seed) == (5, ["\n"], 0.7, 0.9, -4)
    assert (second.max_tokens, second.stop, second.temperature, second.top_p) == (10**9, ["a", "b"], 0.0, 1.0)
    assert (plain.max_tokens, plain.stop, plain.temperature, plain.top_p, plain.seed) == (None,) * 5


# -- end to end: the official client, the gateway and serve on the real stack ----------------------------------
@pytest.fixture(scope="module")
def live(
    stack: Settings, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, openai.OpenAI]]:
    """serve and the gateway on a deployment of their own, acme with one indexed document."""
    with Deployment(tmp_path_factory.mktemp("controls"), "ctl", tiny_serving(tiny_model), tiny_gateway()) as deployment:
        settings = deployment.settings
        services = [deployment.query_server(), deployment.http_gateway()]
        deployment.start_while_indexing(
            services, {"refunds": "Refunds are accepted within 30 days of delivery."}, ["acme"]
        )
        base = f"http://127.0.0.1:{settings.http.port}"
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=10).json().get("weaviate") == "ok", 60, "Weaviate")
        yield settings, openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)


def _complete(client: openai.OpenAI, **extra: Any) -> Any:
    return client.chat.completions.create(model="acme", messages=[{"role": "user", "content": QUESTION}], **extra)


@pytest.mark.integration
@pytest.mark.slow
def test_the_openai_client_controls_length_stop_and_seed(live: tuple[Settings, openai.OpenAI]) -> None:
    settings, client = live
    whole = _complete(client)
    text, tokens = whole.choices[0].message.content, whole.usage.completion_tokens
    assert tokens >= 1, whole
    budget = min(5, tokens)  # greedy: the same tokens again, cut at the budget (the model would have gone on)
    cut = _complete(client, max_tokens=budget)
    assert cut.usage.completion_tokens == budget <= 5 and cut.choices[0].finish_reason == "length"
    assert text.startswith(cut.choices[0].message.content)
    newer = _complete(client, max_completion_tokens=budget)
    assert newer.choices[0].message.content == cut.choices[0].message.content
    capped = _complete(client, max_tokens=10_000)  # accepted, capped at inference.max_new_tokens
    assert capped.usage.completion_tokens <= settings.inference.max_new_tokens

    stop = _stop_in(text)  # from the answer's second half: the stream ends before it
    chunks = list(_complete(client, stop=[stop], stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text[: text.find(stop)].rstrip()
    assert not any(stop in piece for piece in pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    seeded = [_complete(client, temperature=1.0, top_p=0.95, seed=42).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    refused = httpx.post(
        f"http://127.0.0.1:{settings.http.port}/v1/chat/completions",
        content=json.dumps({"model": "acme", "messages": [{"role": "user", "content": QUESTION}], "top_p": 0}),
        timeout=30,
    )
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "top_p")
