"""Reliability trials: the race, kill and edit scenarios of ``tests/test_reliability.py``, N times each.

Runs the test module with ``FEATPIPE_RELIABILITY_TRIALS=N`` (every race and SIGKILL scenario is
parametrised over N trials, with a different kill time per trial) and counts, per scenario, the trials
that ended as the tests require (both processes exit 0 with no traceback and the cache equals an
uninterrupted build; no worker alive 5 s after its main process was SIGKILLed; a killed extraction
resumes to byte-identical features; leftovers removed and reported). Writes
``benchmarks/results/reliability.md`` and ``.json``.

    python benchmarks/reliability_trials.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        env = {**os.environ, "FEATPIPE_RELIABILITY_TRIALS": str(args.trials), "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability.py",
                        f"--junitxml={xml}"], cwd=REPO, env=env, check=False)
        seconds = time.perf_counter() - t0
        load = os.getloadavg()[1]
        cases = ET.parse(xml).getroot().iter("testcase")
        runs, ok = Counter(), Counter()
        for case in cases:
            name = re.sub(r"\[.*\]$", "", case.get("name"))
            params = re.search(r"\[(.*)\]$", case.get("name"))
            if params and not params.group(1).isdigit():
                name += f"[{params.group(1).split('-')[0]}-{params.group(1).split('-')[1]}]"
            runs[name] += 1
            ok[name] += not any(child.tag in ("failure", "error", "skipped") for child in case)
    rows = [{"scenario": n, "trials": runs[n], "passed": ok[n]} for n in runs]
    body = {"trials_per_scenario": args.trials, "seconds": round(seconds, 1), "machine": platform.platform(),
            "cpus": os.cpu_count(), "load_average_5min": round(load, 1), "command": f"python benchmarks/reliability_trials.py --trials {args.trials}",
            "scenarios": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reliability.json").write_text(json.dumps(body, indent=1) + "\n")
    lines = [f"# Reliability trials ({args.trials} per race/kill scenario)", "",
             f"`{body['command']}` on {body['machine']}, {body['cpus']} CPUs shared with other jobs (5-minute load "
             f"average {load:.1f} at the end), {seconds:.0f} s.", "",
             "| scenario | trials | as required |", "|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['trials']} | {r['passed']} |" for r in rows]
    md = OUT / "reliability.md"
    kept = md.read_text().partition("\n## Attacks (issue 21)")[1:] if md.exists() else ("", "")
    (OUT / "reliability.md").write_text("\n".join(lines) + "\n" + "".join(kept))  # benchmarks/reliability_attacks.py's section stays
    print("\n".join(lines))
    return 0 if all(r["trials"] == r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
