"""The Flink and retrieval side must import without torch / transformers / peft (STYLE.md, habit 7)."""

from __future__ import annotations

import subprocess
import sys


def test_core_streams_and_retrieval_import_without_ml_libraries() -> None:
    code = (
        "import sys, streamtune.cli, streamtune.settings, streamtune.contracts, streamtune.topics, "
        "streamtune.kafka, streamtune.stack, streamtune.models, streams, retrieval\n"
        "heavy = ('torch', 'transformers', 'peft', 'trl', 'sentence_transformers')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
