"""A few seconds of `python -m bench`: it runs end to end and reports every column.

Not a performance test: nothing here judges the numbers. Needs wrk (bench/setup.sh installs it;
CI runs bench/setup.sh before the tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THROUGHPUT_COLUMNS = {"rps", "p50_ms", "p99_ms", "errors", "extproc_cpu_us_per_req", "envoy_cpu_us_per_req",
                      "machine_cpu_us_per_req"}
STREAM_COLUMNS = {"first_byte_p50_ms", "first_event_p50_ms", "gap_mean_ms", "gap_p50_ms", "gap_p99_ms", "gap_max_ms"}
TABLE_HEADINGS = ("req/s", "p50 ms", "p99 ms", "errors", "ratio b/a", "ext_proc CPU us/req", "first byte p50 ms",
                  "gap p99 ms", "added p50 ms", "RSS", "Targets:")


@pytest.mark.timeout(180)
def test_bench_runs_and_reports_every_column(tmp_path: Path) -> None:
    assert shutil.which("wrk"), "wrk is not installed: run bench/setup.sh (CI's .ci/run does)"
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--duration", "1", "--warmup", "0", "--connections", "1,4",
         "--workers", "1", "--streams", "2", "--sse-chunks", "3", "--sse-interval-ms", "10",
         "--large-body-requests", "2", "--soak", "2", "--grpcio", "--floor", "--json", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for heading in TABLE_HEADINGS:
        assert heading in done.stdout, heading

    results = json.loads(output.read_text())
    rows = {(r["setup"], r["connections"]): r for r in results["throughput"]}
    # g: the grpcio runtime, f: the floor server; each must really serve (health checks included).
    assert set(rows) == {(setup, conns) for setup in ("a", "b1", "g1", "f1") for conns in (1, 4)}
    for (setup, _), row in rows.items():
        assert THROUGHPUT_COLUMNS <= row.keys()
        assert row["requests"] > 0 and row["errors"] == 0
        assert (row["extproc_cpu_us_per_req"] is None) == (setup == "a")
    assert [s["setup"] for s in results["streaming"]] == ["a", "b1", "g1", "f1"]
    assert all(STREAM_COLUMNS <= s.keys() for s in results["streaming"])
    assert [(r["setup"], r["ok"]) for r in results["large_body"]] == [("a", 2), ("b1", 2), ("g1", 2), ("f1", 2)]
    assert results["soak"]["rss_after_bytes"] > 0 and results["soak"]["errors"] == 0
    assert any(t["target"].startswith("1 MiB body through") and t["holds"] for t in results["targets"])
    assert results["machine"]["cores"] and results["machine"]["envoy"]
