"""Sums the pass/fail counts that each test runner printed; prints `N passed, N failed`.

Exit status is non-zero if anything failed. A runner that exited non-zero without
reporting a failure, or reported nothing at all, counts as one failure.
"""
from __future__ import annotations

import pathlib
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def counts(runner: str, text: str) -> tuple[int, int] | None:
    """(passed, failed) as reported by one runner, or None if it reported nothing."""
    if runner == "cargo":
        found = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", text)
        if not found:
            return None
        return sum(int(p) for p, _ in found), sum(int(f) for _, f in found)
    if runner == "conformance":
        # ErlangEventLoop's passes; undocumented regressions and incomplete modules.
        if m := re.search(r"^conformance-total: (\d+) passed, (\d+) failed", text, re.M):
            return int(m[1]), int(m[2])
        return None
    if runner == "ct":
        if m := re.search(r"All (\d+) tests passed", text):
            passed, failed = int(m[1]), 0
        elif m := re.search(r"Failed (\d+) tests?\. Passed (\d+) tests?", text):
            passed, failed = int(m[2]), int(m[1])
        else:
            return None
        # A skipped test is a defect here, not a pass.
        if m := re.search(r"Skipped (\d+)", text):
            failed += int(m[1])
        return passed, failed
    # EUnit and ExUnit both end with "N tests, M failures".
    found = re.findall(r"(\d+) tests?, (\d+) failures?", text)
    if not found:
        if runner == "eunit" and "There were no tests to run" in text:
            return 0, 0
        return None
    total, failed = (int(x) for x in found[-1])
    return total - failed, failed


def failed_cases(runner: str, text: str) -> list[str]:
    """Names (and the start of the reason) of failed cases, so that the last lines of a
    CI log say which test failed, not only how many."""
    if runner == "ct":
        # rebar3 prints `%%% Suite ==> case: FAILED`, then the reason over a few lines.
        lines = text.splitlines()
        found = []
        for i, line in enumerate(lines):
            if m := re.match(r"%%% (\S+) ==> (.+): FAILED", line):
                reason = []
                for following in lines[i + 1 : i + 8]:
                    following = following.split("==>", 1)[-1].strip()
                    if following.startswith(("%%%", "...")):
                        break
                    if following:
                        reason.append(following)
                found.append(f"{m[1]}:{m[2]} {' '.join(reason)[:400]}")
        return found
    if runner in ("eunit", "exunit"):
        return re.findall(r"^\s*\d+\) (.+)$", text, re.M)[:20]
    return []


def main(log_dir: str) -> int:
    passed = failed = 0
    for log in sorted(pathlib.Path(log_dir).glob("*.log")):
        runner = log.stem
        text = ANSI.sub("", log.read_text(errors="replace"))
        exit_file = log.with_suffix(".exit")
        code = int(exit_file.read_text().strip() or 1) if exit_file.exists() else 0
        result = counts(runner, text)
        if result is None:
            print(f"{runner}: reported no results (exit {code}); counted as 1 failure")
            result = (0, 1)
        p, f = result
        if code != 0 and f == 0:
            print(f"{runner}: exited {code} without a reported failure; counted as 1 failure")
            f = 1
        for name in failed_cases(runner, text):
            print(f"{runner}: FAILED {name}")
        print(f"{runner}: {p} passed, {f} failed")
        passed += p
        failed += f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".test-logs"))
