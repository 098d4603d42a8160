"""The replay check: this tree answers the recorded /v1 requests exactly as ``tests/replay/recorded.json`` says.

Every status, header, body, upstream call and ledger row of the fixed request set in
``tests/replay/requests.py`` is compared with the recording. ``REPLAY_UPDATE=1`` rewrites the
recording instead (deliberately: see tests/replay/README.md for when that is legitimate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.replay.compare import report

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "replay" / "recorded.json"


def test_replay_matches_the_recording(tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.replay.record", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"the recorder failed:\n{result.stdout}\n{result.stderr}"
    if os.environ.get("REPLAY_UPDATE") == "1":
        shutil.copyfile(out, RECORDED)
        return
    expected = json.loads(RECORDED.read_text())
    actual = json.loads(out.read_text())
    differences = report(expected, actual)
    assert not differences, (
        f"The gateway's answers differ from {RECORDED.relative_to(REPO)} "
        f"(this run's recording: {out}; re-record with REPLAY_UPDATE=1 only if the change is intended):\n"
        f"{differences}"
    )
