"""Child processes for `ErlangEventLoop.subprocess_exec` and `subprocess_shell`.

The BEAM ignores SIGCHLD, so the kernel reaps children at once and `waitpid` cannot get
their status: asyncio's child watchers (and `subprocess.Popen.wait`) do not work inside
it. Children are spawned natively with a pidfd instead; the loop watches the pidfd like
any fd (through its event process) and reads the exit status from it.
"""
from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import time
from asyncio import base_subprocess
from typing import Any, Optional, Sequence

import _pybeam

# Popen options this loop implements, beyond those asyncio itself checks.
_SUPPORTED = {"cwd", "env", "start_new_session", "close_fds", "pass_fds"}
# Popen options that only have meaning elsewhere, accepted with the values POSIX allows:
# children always get default signal handling back (restore_signals).
_POSIX_DEFAULTS = {"creationflags": 0, "startupinfo": None, "restore_signals": True}


def _stdio(value: Any) -> Optional[int]:
    """subprocess's stdio values as the spawner wants them: None inherits."""
    if value is None or value in (subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL):
        return value
    if isinstance(value, int):
        return value
    return value.fileno()


class _Child:
    """The subset of `subprocess.Popen` that asyncio's subprocess transport uses."""

    def __init__(self, args: Any, pid: int, pidfd: int,
                 stdin: Optional[int], stdout: Optional[int], stderr: Optional[int]) -> None:
        self.args = args
        self.pid = pid
        self.pidfd: Optional[int] = pidfd
        self.returncode: Optional[int] = None
        self.stdin = open(stdin, "wb", buffering=0) if stdin is not None else None
        self.stdout = open(stdout, "rb", buffering=0) if stdout is not None else None
        self.stderr = open(stderr, "rb", buffering=0) if stderr is not None else None

    def poll(self) -> Optional[int]:
        if self.returncode is None and self.pidfd is not None:
            self.returncode = _pybeam.child_poll(self.pidfd)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None or self.pidfd is None:
            return
        _pybeam.child_signal(self.pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Blocks until the child exits (as Popen.wait); the loop's own waiting is
        asynchronous, through its event process."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if self.pidfd is None:
                raise RuntimeError("the child's pidfd is closed but no status was read")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            poller.poll(None if left is None else left * 1000)
        assert self.returncode is not None
        return self.returncode

    def close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class PidfdSubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport over a natively spawned child."""

    _proc: _Child

    def _start(self, args: Any, shell: bool, stdin: Any, stdout: Any, stderr: Any,
               bufsize: int, **kwargs: Any) -> None:
        for name, allowed in _POSIX_DEFAULTS.items():
            if name in kwargs:
                if kwargs.pop(name) != allowed:
                    raise ValueError(f"{name} must be {allowed!r} on this platform")
        unsupported = set(kwargs) - _SUPPORTED
        if unsupported:
            raise TypeError(f"ErlangEventLoop does not support subprocess options "
                            f"{sorted(unsupported)}")
        if shell:
            argv: Sequence[Any] = ["/bin/sh", "-c", args]
        elif isinstance(args, (str, bytes, os.PathLike)):
            argv = [args]
        else:
            argv = list(args)
        env = kwargs.get("env")
        pid, pidfd, fd_in, fd_out, fd_err = _pybeam.spawn(
            argv, kwargs.get("cwd"), dict(env) if env is not None else None,
            _stdio(stdin), _stdio(stdout), _stdio(stderr),
            bool(kwargs.get("start_new_session", False)),
            bool(kwargs.get("close_fds", True)),
            tuple(kwargs.get("pass_fds", ())))
        self._proc = _Child(args, pid, pidfd, fd_in, fd_out, fd_err)
        self._loop._add_reader(pidfd, self._pidfd_ready)

    def _pidfd_ready(self) -> None:
        proc = self._proc
        returncode = proc.poll()
        if returncode is None:
            return
        if proc.pidfd is not None:
            self._loop._remove_reader(proc.pidfd)
            proc.close_pidfd()
        self._process_exited(returncode)

    def close(self) -> None:
        super().close()
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.returncode is not None and proc.pidfd is not None:
            self._loop._remove_reader(proc.pidfd)
            proc.close_pidfd()


async def make_transport(loop: Any, protocol: asyncio.BaseProtocol, args: Any, shell: bool,
                         stdin: Any, stdout: Any, stderr: Any, bufsize: int,
                         extra: Any = None, **kwargs: Any) -> asyncio.SubprocessTransport:
    waiter = loop.create_future()
    transport = PidfdSubprocessTransport(loop, protocol, args, shell, stdin, stdout, stderr,
                                         bufsize, waiter=waiter, extra=extra, **kwargs)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    return transport
