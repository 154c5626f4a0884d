"""Compares the two runs of CPython's asyncio tests and prints the conformance line.

A test that passes on asyncio's default loop must pass on ErlangEventLoop, unless it is a
documented exception: a row of the table between the `conformance-exceptions` markers in
docs/asyncio.md. Exits non-zero on an undocumented regression or a module that did not
complete. The line before the last, for the test totals, is
`conformance-total: P passed, F failed` (ErlangEventLoop's passes; regressions and
incomplete modules).
"""
from __future__ import annotations

import json
import pathlib
import re
import sys

MODULES = ["test_events", "test_tasks", "test_futures", "test_locks", "test_queues",
           "test_streams", "test_server", "test_sock_lowlevel", "test_subprocess",
           "test_timeouts", "test_taskgroups", "test_base_events"]


def documented(doc: pathlib.Path) -> dict[str, str]:
    text = doc.read_text() if doc.exists() else ""
    m = re.search(r"<!-- conformance-exceptions -->(.*?)<!-- /conformance-exceptions -->", text, re.S)
    rows = {}
    for line in (m.group(1).splitlines() if m else []):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def main(out_dir: str, doc_path: str) -> int:
    out = pathlib.Path(out_dir)
    exceptions = documented(pathlib.Path(doc_path))
    totals = {"default": [0, 0], "erlang": [0, 0]}
    regressions: list[tuple[str, str]] = []
    applied = set()
    incomplete = []
    for module in MODULES:
        path = out / f"{module}.json"
        if not path.exists():
            incomplete.append(module)
            continue
        report = json.loads(path.read_text())
        for variant in ("default", "erlang"):
            for result in report[variant]["tests"].values():
                if result["outcome"] == "pass":
                    totals[variant][0] += 1
                elif result["outcome"] in ("fail", "error"):
                    totals[variant][1] += 1
        ours = report["erlang"]["tests"]
        for test_id, result in report["default"]["tests"].items():
            if result["outcome"] != "pass" or ours.get(test_id, {}).get("outcome") == "pass":
                continue
            key = f"{module}.{test_id}"
            if key in exceptions:
                applied.add(key)
            else:
                detail = ours.get(test_id, {"outcome": "missing", "detail": ""})
                regressions.append((key, f"{detail['outcome']}: {detail['detail'][-300:]}"))
    for key, detail in regressions:
        print(f"REGRESSION {key}\n    {detail.strip()}")
    for module in incomplete:
        print(f"INCOMPLETE {module}: see its log")
    for key in sorted(set(exceptions) - applied):
        print(f"note: documented exception now passes (or did not run): {key}")
    (p1, f1), (p2, f2) = totals["default"], totals["erlang"]
    failed = len(regressions) + len(incomplete)
    print(f"conformance-total: {p2} passed, {failed} failed")
    print(f"conformance: default loop {p1} passed {f1} failed; "
          f"ErlangEventLoop {p2} passed {f2} failed; {len(applied)} documented exceptions")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
