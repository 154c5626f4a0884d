"""CPython's own asyncio tests, run inside the embedded interpreter on two loops.

Each module runs twice in the same interpreter: once on asyncio's default loop
(`SelectorEventLoop` with epoll) and once on `erlang.ErlangEventLoop`. Where a module
parametrises its tests by loop class (test_events, test_sock_lowlevel, test_subprocess),
both variants get the same mixins; other modules run whole under each loop's policy.
Results are written per test so that the two runs can be compared test by test.

Two things hold for both loops alike, because Python is embedded in the BEAM: Python's
main thread is one the BEAM owns, so nothing here can install signal handlers (the SIGCHLD
child-watcher mixin of test_events is left out for both), and the BEAM ignores SIGCHLD, so
the default loop's child watchers cannot read exit statuses.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import selectors
import sys
import threading
import time
import traceback
import unittest
from typing import Any, Callable

import erlang

PACKAGE = "test.test_asyncio"


class _Recorder(unittest.TestResult):
    """Keeps one outcome per test: pass, fail, error, skip (unexpected success is a fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: dict[str, dict[str, Any]] = {}

    def _record(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        self.outcomes[test.id()] = {"outcome": outcome, "detail": detail[-2000:]}

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._record(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        self._record(test, "fail", "unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: Any, err: Any) -> None:
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._record(test, kind, self._exc_info_to_string(err, subtest))


def _loop_classes(module: Any, variant: str) -> list[type]:
    """The loop-parametrised test classes of a module, for one loop."""
    name = module.__name__.rsplit(".", 1)[-1]
    factory: Callable[[Any], asyncio.AbstractEventLoop]
    if variant == "default":
        factory = lambda self: asyncio.SelectorEventLoop(selectors.EpollSelector())  # noqa: E731
    else:
        factory = lambda self: erlang.ErlangEventLoop()  # noqa: E731
    utils = importlib.import_module(f"{PACKAGE}.utils")
    # Named as if defined in the test module, so that ids match across the two runs.
    where = {"__module__": module.__name__}
    if name == "test_events":
        cls = type("LoopTests", (module.EventLoopTestsMixin, module.SubprocessTestsMixin,
                                 utils.TestCase), {"create_event_loop": factory, **where})
        return [cls]
    if name == "test_sock_lowlevel":
        return [type("LoopTests", (module.BaseSockTestsMixin, unittest.TestCase),
                     {"create_event_loop": factory, **where})]
    if name == "test_subprocess":
        if variant == "default":
            # asyncio's default child watcher on Linux 3.11.
            return [module.SubprocessThreadedWatcherTests]
        def set_up(self: Any) -> None:
            utils.TestCase.setUp(self)
            self.loop = erlang.ErlangEventLoop()
            self.set_event_loop(self.loop)
        return [type("LoopTests", (module.SubprocessMixin, utils.TestCase), {"setUp": set_up, **where})]
    return []


# Classes of those modules that are parametrised by loop, and left to _loop_classes.
_PARAMETRISED = ("EventLoopTests", "SockTests", "WatcherTests", "ProactorTests")


def _suite(module_name: str, variant: str) -> unittest.TestSuite:
    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    specific = _loop_classes(module, variant)
    for name in dir(module):
        obj = getattr(module, name)
        if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
            continue
        if obj.__module__ != module.__name__ or name == "LoopTests":
            continue
        if specific and name.endswith(_PARAMETRISED):
            continue
        suite.addTests(loader.loadTestsFromTestCase(obj))
    for cls in specific:
        suite.addTests(loader.loadTestsFromTestCase(cls))
    return suite


def _normalise(test_id: str) -> str:
    """The id a test has under both variants (the loop class name differs)."""
    parts = test_id.split(".")
    if len(parts) >= 2 and parts[-2] in ("LoopTests", "SubprocessThreadedWatcherTests"):
        parts[-2] = "LoopTests"
    return ".".join(parts[-3:])


def _run(module_name: str, variant: str) -> dict[str, Any]:
    policy = erlang.EventLoopPolicy() if variant == "erlang" else asyncio.DefaultEventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    result = _Recorder()
    started = time.monotonic()
    try:
        _suite(module_name, variant).run(result)
    except BaseException:  # a broken module counts as one error, not as nothing
        result.outcomes[f"{module_name}.<module>"] = {"outcome": "error", "detail": traceback.format_exc()}
    finally:
        asyncio.set_event_loop_policy(None)
    return {"seconds": round(time.monotonic() - started, 1),
            "tests": {_normalise(k): v for k, v in result.outcomes.items()}}


def run_module(module_name: str, out_file: str) -> int:
    """Runs one module on both loops, in a plain Python thread (as an application's own
    thread would), and writes the outcomes to `out_file`. Returns the number of tests."""
    report: dict[str, Any] = {"module": module_name, "python": sys.version.split()[0]}

    def work() -> None:
        for variant in ("default", "erlang"):
            report[variant] = _run(module_name, variant)

    worker = threading.Thread(target=work, name=f"conformance-{module_name}")
    worker.start()
    worker.join()
    with open(out_file, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    return len(report.get("erlang", {}).get("tests", {}))
