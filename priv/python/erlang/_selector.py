"""A selector whose readiness comes from the loop's event process.

`ErlangEventLoop` has no epoll of its own: registering an fd asks the loop's event process
to watch it (`enif_select`), and readiness comes back with everything else the event
process delivers. Only the loop waits; `select()` is not for direct use.
"""
from __future__ import annotations

import errno
import os
import selectors
import stat
from collections.abc import Mapping
from selectors import EVENT_READ, EVENT_WRITE, SelectorKey
from typing import Any, Iterator, Optional

_fileobj_to_fd = selectors._fileobj_to_fd  # type: ignore[attr-defined]


class _KeyMap(Mapping):
    """The read-only fileobj -> key view that `get_map()` returns."""

    def __init__(self, selector: "BeamSelector") -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._fd_to_key)

    def __getitem__(self, fileobj: Any) -> SelectorKey:
        fd = self._selector._fileobj_lookup(fileobj)
        try:
            return self._selector._fd_to_key[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._selector._fd_to_key)


class BeamSelector(selectors.BaseSelector):
    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._fd_to_key: dict[int, SelectorKey] = {}
        self._map = _KeyMap(self)

    def _fileobj_lookup(self, fileobj: Any) -> int:
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            # A closed file object: find it by identity, as selectors do.
            for key in self._fd_to_key.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def register(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        if (not events) or (events & ~(EVENT_READ | EVENT_WRITE)):
            raise ValueError(f"Invalid events: {events!r}")
        key = SelectorKey(fileobj, self._fileobj_lookup(fileobj), events, data)
        if key.fd in self._fd_to_key:
            raise KeyError(f"{fileobj!r} (FD {key.fd}) is already registered")
        # As epoll would: a closed or invalid fd is refused now, not later, and so are
        # regular files and directories, which cannot be polled.
        mode = os.fstat(key.fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        self._fd_to_key[key.fd] = key
        self._loop._watch(key.fd, events, True)
        return key

    def unregister(self, fileobj: Any) -> SelectorKey:
        try:
            key = self._fd_to_key.pop(self._fileobj_lookup(fileobj))
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self._loop._watch(key.fd, key.events, False)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> SelectorKey:
        try:
            key = self._fd_to_key[self._fileobj_lookup(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if (not events) or (events & ~(EVENT_READ | EVENT_WRITE)):
            raise ValueError(f"Invalid events: {events!r}")
        if events != key.events:
            if key.events & ~events:
                self._loop._watch(key.fd, key.events & ~events, False)
            if events & ~key.events:
                self._loop._watch(key.fd, events & ~key.events, True)
            key = key._replace(events=events, data=data)
        elif data != key.data:
            key = key._replace(data=data)
        self._fd_to_key[key.fd] = key
        return key

    def select(self, timeout: Optional[float] = None) -> list[tuple[SelectorKey, int]]:
        raise RuntimeError("readiness comes from the loop's event process; only the loop waits")

    def close(self) -> None:
        for key in self._fd_to_key.values():
            self._loop._watch(key.fd, key.events, False)
        self._fd_to_key.clear()
        # The selector, its map and its loop form a cycle: broken here, a closed loop (and
        # the native loop it holds, with its request queue) is freed at once, not at the
        # next full garbage collection. selectors' own close() drops its map the same way.
        self._map = None  # type: ignore[assignment]
        self._loop = None

    def get_map(self) -> Optional[Mapping[Any, SelectorKey]]:
        return self._map

    # Called by the loop's native core.

    def _events_for(self, ready: list[tuple[int, int]]) -> list[tuple[SelectorKey, int]]:
        keys = self._fd_to_key
        events = []
        for fd, mask in ready:
            key = keys.get(fd)
            if key is not None and key.events & mask:
                events.append((key, mask))
        return events

    def _watch_failed(self, failed: list[tuple[int, int]]) -> None:
        for fd, mask in failed:
            key = self._fd_to_key.get(fd)
            if key is None:
                continue
            self._loop.call_exception_handler({
                "message": f"fd {fd} could not be watched: it was closed, "
                           f"or another loop watches it",
                "fd": fd,
            })
