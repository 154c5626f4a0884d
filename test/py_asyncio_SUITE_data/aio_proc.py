"""Child processes: `create_subprocess_exec` and `create_subprocess_shell` with pipes."""
from __future__ import annotations

import asyncio
import signal
from asyncio.subprocess import PIPE


async def cat_echo(lines: list[bytes]) -> tuple[list[bytes], bytes, bytes, int]:
    proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    echoed = []
    # One line at a time: each answer proves the pipes work both ways while cat runs.
    for line in lines:
        proc.stdin.write(line)
        await proc.stdin.drain()
        echoed.append(await proc.stdout.readline())
    proc.stdin.close()
    rest = await proc.stdout.read()
    err = await proc.stderr.read()
    return echoed, rest, err, await proc.wait()


async def exit_codes() -> list[tuple[bytes, bytes, int]]:
    results = []
    for script in ["echo out; echo err >&2; exit 3", "exit 0", "printf x; exit 200"]:
        proc = await asyncio.create_subprocess_exec("sh", "-c", script, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        results.append((out, err, proc.returncode))
    return results


async def signals() -> list[int]:
    codes = []
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    proc.kill()
    codes.append(await proc.wait())
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    proc.send_signal(signal.SIGTERM)
    codes.append(await proc.wait())
    # Killed by a signal nobody in this process sent.
    proc = await asyncio.create_subprocess_exec("sh", "-c", "kill -USR1 $$")
    codes.append(await proc.wait())
    return codes


async def shell() -> tuple[bytes, bytes, int]:
    proc = await asyncio.create_subprocess_shell("echo $((6 * 7)); echo oops >&2; exit 5",
                                                 stdout=PIPE, stderr=PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return out, err, proc.returncode


async def communicate_large(data: bytes) -> tuple[bytes, bytes, int]:
    # More than a pipe holds in both directions: stdin and stdout must progress together.
    proc = await asyncio.create_subprocess_exec("sh", "-c", "cat; echo done >&2",
                                                stdin=PIPE, stdout=PIPE, stderr=PIPE)
    out, err = await proc.communicate(data)
    assert proc.returncode is not None
    return out, err, proc.returncode
