"""`python -m bench --profile DIR`: py-spy on the ext_proc processes while wrk loads (b).

Writes py-spy's collapsed stacks (open them in speedscope.app, or flamegraph.pl) and a summary of
where the samples fall: by function (self), and by stack frame (inclusive).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from .stacks import Target


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.is_file() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: run bench/setup.sh --profile (pip install py-spy)")
    return found


def summarize(collapsed: Path, top: int = 25) -> dict[str, Any]:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"frame": f, "samples": n, "percent": round(100 * n / total, 1)} for f, n in counter.most_common(top)]

    return {"samples": total, "self": share(self_counts), "inclusive": share(inclusive)}


def record(target: Target, directory: Path, drive: Callable[[float], object], seconds: float,
           native: bool = False) -> dict[str, Any]:
    assert target.extproc is not None
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"extproc-x{target.workers}.collapsed.txt"
    argv = [py_spy(), "record", "--pid", str(target.extproc.pid), "--subprocesses", "--rate", "250",
            "--duration", f"{int(seconds)}", "--format", "raw", "--output", str(output)]
    # --native (C frames too, e.g. grpcio's core) must pause the process per sample; off by default.
    argv.append("--native" if native else "--nonblocking")
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        drive(seconds)
    finally:
        _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
    summary = summarize(output)
    (directory / f"extproc-x{target.workers}.summary.txt").write_text(
        "self:\n" + "\n".join(f"{r['percent']:5.1f}%  {r['frame']}" for r in summary["self"])
        + "\n\ninclusive:\n" + "\n".join(f"{r['percent']:5.1f}%  {r['frame']}" for r in summary["inclusive"]) + "\n")
    return {"collapsed": str(output), **summary}
