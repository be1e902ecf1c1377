"""One-shot commands with a dependency down: each prints one line naming the component, its address and the fix,
exits 69 (EX_UNAVAILABLE) and waits no longer than ``kafka.request_timeout_s``; never a traceback.

The broker is "stopped" the way a user meets it: a bootstrap address on a free port where nothing listens
(the same connection refusals a stopped local broker gives), so the shared stack stays up for everyone else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamtune.cli.main import EXIT_UNAVAILABLE
from streamtune.harness import free_port, sample_manifest
from training.registry import AdapterRegistry

pytestmark = [pytest.mark.integration, pytest.mark.fault]

_TIMEOUT_S = 2  # kafka.request_timeout_s for these runs: the bound on each command's wait


def _registry(root: Path) -> None:
    """acme: v0001 and v0002 promoted (v0002 current), v0003 a canary: every adapters action has work to do."""
    registry = AdapterRegistry(root, "acme")
    for name, state, gate in (
        ("v0001", "promoted", {}),
        ("v0002", "promoted", {}),
        ("v0003", "canary", {"canary_percent": 20}),
    ):
        manifest = sample_manifest("acme", name, gate={"promoted": True, **gate})
        registry.publish(name, lambda target, m=manifest: (target / "manifest.json").write_text(m.to_json()), state)


def _run(argv: list[str], tmp_path: Path, **env: str) -> tuple[int, str, float]:
    begin = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streamtune", *argv],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,  # no config/*.toml of the checkout
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAMTUNE__")},
            "OMP_WAIT_POLICY": "PASSIVE",
            "STREAMTUNE__TRAINING__ADAPTERS_DIR": str(tmp_path / "adapters"),
            "STREAMTUNE__KAFKA__REQUEST_TIMEOUT_S": str(_TIMEOUT_S),
            **env,
        },
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - begin


KAFKA_COMMANDS = [
    ["topics", "create"],
    ["ask", "What is the refund window?", "--tenant", "acme", "--timeout", "30"],
    ["train", "run", "--tenant", "acme"],
    ["train", "replay", "v0001", "--tenant", "acme"],
    ["adapters", "--tenant", "acme", "promote", "v0001"],
    ["adapters", "--tenant", "acme", "rollback"],
    ["adapters", "decide"],
    ["examples", "import", "chat.jsonl", "--tenant", "acme", "--no-length-check"],
    ["examples", "export", "--tenant", "acme", "--version", "v0001"],
]


@pytest.mark.parametrize("argv", KAFKA_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_a_one_shot_command_with_the_broker_down_says_so_in_one_line(argv: list[str], tmp_path: Path) -> None:
    _registry(tmp_path / "adapters")
    (tmp_path / "chat.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]}\n'
    )
    address = f"127.0.0.1:{free_port()}"
    code, output, seconds = _run(argv, tmp_path, STREAMTUNE__KAFKA__BOOTSTRAP_SERVERS=address)
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    assert code == EXIT_UNAVAILABLE, output
    assert len(lines) == 1, output  # librdkafka's per-attempt errors wait for -v
    assert f"Kafka at {address} is unreachable" in lines[0] and "stack" in lines[0], lines[0]
    # the wait is kafka.request_timeout_s (a few of them at most), not the 15 s default or a minute of flushing
    assert seconds < 60, f"{seconds:.0f}s"
    print(f"{' '.join(argv[:2])}: {seconds:.1f}s: {lines[0]}")


def test_search_with_weaviate_down_says_so_in_one_line(tmp_path: Path) -> None:
    http, grpc = free_port(), free_port()
    code, output, seconds = _run(
        ["search", "refunds", "--tenant", "acme"],
        tmp_path,
        STREAMTUNE__WEAVIATE__HTTP_PORT=str(http),
        STREAMTUNE__WEAVIATE__GRPC_PORT=str(grpc),
    )
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    assert code == EXIT_UNAVAILABLE, output
    assert len(lines) == 1, output
    assert f"Weaviate at 127.0.0.1:{http}" in lines[0] and "stack up" in lines[0], lines[0]
    assert seconds < 30, f"{seconds:.0f}s: reported before the embedding model loads"
