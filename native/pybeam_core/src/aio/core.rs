//! `LoopCore`: the native scheduling core of `erlang.ErlangEventLoop`.
//!
//! `ErlangEventLoop` is `class ErlangEventLoop(LoopCore, unix_events._UnixSelectorEventLoop)`:
//! asyncio's own Python code provides `run_forever`, `run_until_complete`, transports,
//! servers, SSL and the rest, while this class provides what runs per callback:
//! `call_soon`, `call_later`, `call_at`, `time`, and `_run_once`. `_run_once` follows
//! CPython 3.11's `BaseEventLoop._run_once` step by step, except that:
//!
//! - it waits through its link (GIL released) for what its event process delivers, not
//!   on a selector, and asks the event process for a wake-up at its next timer;
//! - it serves the native loop's sync requests (`py:call`), with the running loop unset
//!   so that they behave as they would outside any loop;
//! - it runs at most `max_batch` ready callbacks per iteration (per GIL hold), so that
//!   neither requests nor callbacks starve the other.
//!
//! `_ready` and `_scheduled` are views on native structures, so asyncio code that touches
//! them (`close`, `_add_callback`, tests) keeps working.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::handle::{Handle, SpareHandles, TimerHandle};
use super::helpers::{self, monotonic, monotonic_us};
use super::link::{new_link, Command, Delivered, Dir, LinkHandle, LinkOps};
use crate::callbacks;
use crate::gil_cell::GilCell;

/// asyncio's constants (base_events.py).
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;
/// selectors.EVENT_READ / EVENT_WRITE
const EVENT_READ: u32 = 1;
const EVENT_WRITE: u32 = 2;

/// A scheduled timer in the heap: earliest `when` first, then first scheduled.
struct Scheduled {
    when: f64,
    seq: u64,
    handle: Py<TimerHandle>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so that std's max-heap pops the earliest.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.when.total_cmp(&self.when).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Scheduled>,
    seq: u64,
}

#[pyclass(module = "_pybeam", name = "LoopCore", subclass, frozen, weakref)]
pub struct LoopCore {
    ready: GilCell<VecDeque<Py<PyAny>>>,
    spares: SpareHandles,
    timers: Mutex<Timers>,
    timer_cancelled_count: AtomicUsize,
    stopping: AtomicBool,
    closed: AtomicBool,
    debug: AtomicBool,
    link: Arc<dyn LinkOps>,
    /// The fd directions the selector watches: readiness of these is re-armed.
    watched: Mutex<HashSet<(RawFd, Dir)>>,
    /// The deadline (monotonic µs) of the wake-up asked of the event process.
    wakeup_at: Mutex<Option<u64>>,
    /// Whether this loop was made from Python (it then owns its event process).
    own_link: bool,
    /// Futures awaiting `erlang.async_call` answers, by token.
    erlang_calls: Mutex<HashMap<u64, Py<PyAny>>>,
}

impl Drop for LoopCore {
    fn drop(&mut self) {
        if self.own_link {
            self.link.close();
        }
    }
}

fn runtime_error(msg: &str) -> PyErr {
    PyRuntimeError::new_err(msg.to_owned())
}

impl LoopCore {
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(runtime_error("Event loop is closed"));
        }
        Ok(())
    }

    fn new_handle<'py>(
        slf: &Bound<'py, Self>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Handle> {
        Handle::build(slf.py(), callback, args, slf.clone().into_any().unbind(), context, debug)
    }

    /// A handle for `callback(*args)` (a spare one if the loop has one), queued as ready.
    fn push_ready<'py>(
        slf: &Bound<'py, Self>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        let py = slf.py();
        let this = slf.get();
        let handle = this.spares.handle(py, callback, args, slf.clone().into_any().unbind(), context, debug)?;
        this.ready.borrow_mut(py).push_back(handle.clone().into_any().unbind());
        Ok(handle)
    }

    fn schedule(slf: &Bound<'_, Self>, when: f64, callback: Py<PyAny>, args: Py<PyTuple>, context: Option<Py<PyAny>>) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug.load(Ordering::Relaxed);
        if debug {
            slf.call_method0("_check_thread")?;
            slf.call_method1("_check_callback", (&callback, "call_at"))?;
        }
        let base = Self::new_handle(slf, callback, args, context, debug)?;
        let timer = helpers::new_untracked(
            py,
            pyo3::PyClassInitializer::from(base).add_subclass(TimerHandle { when, scheduled: AtomicBool::new(true) }),
        )?
        .unbind();
        let mut timers = this.timers.lock();
        timers.seq += 1;
        let seq = timers.seq;
        timers.heap.push(Scheduled { when, seq, handle: timer.clone_ref(py) });
        Ok(timer)
    }

    /// Drops cancelled timers: all of them when they are many, else those at the head.
    /// The handles are released after the lock: releasing one (its context) may run
    /// Python code, which may schedule timers.
    fn sweep_cancelled(&self, py: Python<'_>) {
        let mut removed = Vec::new();
        {
            let mut timers = self.timers.lock();
            let count = timers.heap.len();
            let cancelled = self.timer_cancelled_count.load(Ordering::Relaxed);
            if count > MIN_SCHEDULED_TIMER_HANDLES && cancelled as f64 / count as f64 > MIN_CANCELLED_TIMER_HANDLES_FRACTION {
                let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut timers.heap)
                    .into_vec()
                    .into_iter()
                    .partition(|s| !s.handle.bind(py).as_super().get().is_cancelled());
                timers.heap = BinaryHeap::from(keep);
                removed = gone;
                self.timer_cancelled_count.store(0, Ordering::Relaxed);
            } else {
                while let Some(head) = timers.heap.peek() {
                    if !head.handle.bind(py).as_super().get().is_cancelled() {
                        break;
                    }
                    removed.extend(timers.heap.pop());
                    self.timer_cancelled_count.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        for s in &removed {
            s.handle.get().scheduled.store(false, Ordering::Relaxed);
        }
        drop(removed);
    }

    /// Asks the event process to wake the loop `timeout` from now, unless a wake-up at
    /// that moment (to the millisecond) is already asked for.
    fn arm_wakeup(&self, timeout: f64) {
        let now = monotonic_us();
        let deadline = now + (timeout * 1e6).ceil() as u64;
        let mut armed = self.wakeup_at.lock();
        if let Some(at) = *armed {
            if at / 1000 == deadline / 1000 && at >= now {
                return;
            }
        }
        *armed = Some(deadline);
        self.link.command(Command::WakeAt(Some(Duration::from_micros(deadline - now))));
    }

    fn watch(&self, fd: RawFd, dir: Dir, on: bool) {
        let changed = {
            let mut watched = self.watched.lock();
            if on { watched.insert((fd, dir)) } else { watched.remove(&(fd, dir)) }
        };
        if changed {
            self.link.command(if on { Command::Watch(fd, dir) } else { Command::Unwatch(fd, dir) });
        }
    }

    /// Runs one ready item: a native handle directly, anything else through `_run()`.
    fn run_item(py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(h) = item.cast::<Handle>() {
            if h.get().is_cancelled() {
                return Ok(());
            }
            return Handle::run(h);
        }
        let _ = py;
        if item.getattr("_cancelled")?.is_truthy()? {
            return Ok(());
        }
        item.call_method0("_run").map(|_| ())
    }

    /// Resolves the future of an `erlang.async_call` (unless it was cancelled).
    fn answer_erlang_call(&self, py: Python<'_>, token: u64, reply: &callbacks::Reply) -> PyResult<()> {
        let Some(future) = self.erlang_calls.lock().remove(&token) else { return Ok(()) };
        let future = future.bind(py);
        if future.call_method0("done")?.is_truthy()? {
            return Ok(());
        }
        match callbacks::reply_to_python(py, reply) {
            Ok(value) => future.call_method1("set_result", (value,))?,
            Err(e) => future.call_method1("set_exception", (e.value(py),))?,
        };
        Ok(())
    }

    fn run_debug(slf: &Bound<'_, Self>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Ok(h) = item.cast::<Handle>() {
            if h.get().is_cancelled() {
                return Ok(());
            }
        } else if item.getattr("_cancelled")?.is_truthy()? {
            return Ok(());
        }
        slf.setattr("_current_handle", item)?;
        let t0 = monotonic();
        let result = Self::run_item(py, item);
        let dt = monotonic() - t0;
        slf.setattr("_current_handle", py.None())?;
        result?;
        let slow: f64 = slf.getattr("slow_callback_duration")?.extract()?;
        if dt >= slow {
            let base_events = py.import("asyncio.base_events")?;
            let formatted = base_events.getattr("_format_handle")?.call1((item,))?;
            py.import("asyncio.log")?.getattr("logger")?.call_method1(
                "warning",
                ("Executing %s took %.3f seconds", formatted, dt),
            )?;
        }
        Ok(())
    }
}

#[pymethods]
impl LoopCore {
    /// `LoopCore(_link=None)`: a loop made from Python code asks the BEAM for its own event
    /// process (this waits, GIL released, for the reply).
    #[new]
    #[pyo3(signature = (*_args, **kwargs))]
    fn py_new(py: Python<'_>, _args: &Bound<'_, PyTuple>, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let given = match kwargs {
            Some(k) => k.get_item("_link")?.filter(|l| !l.is_none()),
            None => None,
        };
        let (link, own_link) = match given {
            Some(l) => (l.cast::<LinkHandle>()?.get().ops.clone(), false),
            None => (py.detach(new_link).map_err(|e| runtime_error(&e))?, true),
        };
        Ok(LoopCore {
            ready: GilCell::new(VecDeque::new()),
            spares: SpareHandles::new(),
            timers: Mutex::new(Timers::default()),
            timer_cancelled_count: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            link,
            watched: Mutex::new(HashSet::new()),
            wakeup_at: Mutex::new(None),
            own_link,
            erlang_calls: Mutex::new(HashMap::new()),
        })
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        monotonic()
    }

    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon<'py>(
        slf: &Bound<'py, Self>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug.load(Ordering::Relaxed);
        if debug {
            slf.call_method0("_check_thread")?;
            slf.call_method1("_check_callback", (&callback, "call_soon"))?;
        }
        let handle = Self::push_ready(slf, callback, args, context, debug)?;
        Ok(handle)
    }

    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon_threadsafe<'py>(
        slf: &Bound<'py, Self>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, Handle>> {
        let this = slf.get();
        this.check_closed()?;
        let debug = this.debug.load(Ordering::Relaxed);
        if debug {
            slf.call_method1("_check_callback", (&callback, "call_soon_threadsafe"))?;
        }
        let handle = Self::push_ready(slf, callback, args, context, debug)?;
        this.link.wake();
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context = None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: Option<f64>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let delay = delay.ok_or_else(|| PyTypeError::new_err("delay must not be None"))?;
        Self::schedule(slf, monotonic() + delay, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context = None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: Option<f64>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when = when.ok_or_else(|| PyTypeError::new_err("when cannot be None"))?;
        Self::schedule(slf, when, callback, args, context)
    }

    fn _timer_handle_cancelled(&self, _handle: &Bound<'_, PyAny>) {
        self.timer_cancelled_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Wakes the loop from another thread (asyncio's self-pipe, without a pipe).
    fn _write_to_self(&self) {
        self.link.wake();
    }

    /// Called by the selector: start or stop watching an fd direction.
    fn _watch(&self, fd: RawFd, events: u32, on: bool) {
        if events & EVENT_READ != 0 {
            self.watch(fd, Dir::Read, on);
        }
        if events & EVENT_WRITE != 0 {
            self.watch(fd, Dir::Write, on);
        }
    }

    /// `await erlang.async_call(name, *args)`: a future for the answer of an Erlang
    /// function, which this loop's next iteration after the answer resolves.
    #[pyo3(signature = (name, args, timeout = None))]
    fn _erlang_call<'py>(
        slf: &Bound<'py, Self>,
        name: &str,
        args: &Bound<'py, PyTuple>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let future = slf.call_method0("create_future")?;
        let token = callbacks::call_for_loop(this.link.clone(), name, args, timeout)?;
        this.erlang_calls.lock().insert(token, future.clone().unbind());
        Ok(future)
    }

    /// The native loop is being destroyed (its event process is stopping).
    #[getter]
    fn _link_closing(&self) -> bool {
        self.link.is_closing()
    }

    /// A loop made from Python releases its native loop, and its event process stops. A
    /// loop's own thread loop is ended by its event process instead.
    fn _release_link(&self) {
        if self.own_link {
            self.link.close();
        }
    }

    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.sweep_cancelled(py);

        let stopping = this.stopping.load(Ordering::Relaxed);
        let has_ready = !this.ready.borrow_mut(py).is_empty();
        let timeout = if has_ready || stopping || this.link.is_closing() {
            Some(0.0)
        } else {
            this.timers.lock().heap.peek().map(|s| (s.when - monotonic()).clamp(0.0, MAXIMUM_SELECT_TIMEOUT))
        };
        if let Some(t) = timeout {
            if t > 0.0 {
                this.arm_wakeup(t);
            }
        }
        if timeout != Some(0.0) {
            this.spares.trim(py);
        }
        // The event process wakes us for the next timer; the local limit is only a
        // safety net in case that message were lost.
        let limit = timeout.map(|t| if t > 0.0 { Duration::from_secs_f64(t) + Duration::from_millis(5) } else { Duration::ZERO });
        let link = this.link.clone();
        // What this iteration produced (commands, task results) leaves in one go, then we wait.
        let delivered = py.detach(move || {
            link.flush();
            link.wait(limit)
        });
        this.link.run_task_control(py);

        let mut ready_fds: Vec<(RawFd, u32)> = Vec::new();
        let mut failed: Vec<(RawFd, u32)> = Vec::new();
        let mut rearm: Vec<(RawFd, Dir)> = Vec::new();
        for d in delivered {
            match d {
                Delivered::Ready(fd, dir) => {
                    ready_fds.push((fd, mask(dir)));
                    rearm.push((fd, dir));
                }
                Delivered::Failed(fd, dir) => {
                    this.watched.lock().remove(&(fd, dir));
                    failed.push((fd, mask(dir)));
                }
                Delivered::Wakeup => *this.wakeup_at.lock() = None,
                Delivered::Reply(token, reply) => this.answer_erlang_call(py, token, &reply)?,
            }
        }
        if !ready_fds.is_empty() || !failed.is_empty() {
            let selector = slf.getattr("_selector")?;
            if !failed.is_empty() {
                selector.call_method1("_watch_failed", (failed,))?;
            }
            if !ready_fds.is_empty() {
                let event_list = selector.call_method1("_events_for", (ready_fds,))?;
                slf.call_method1("_process_events", (event_list,))?;
            }
        }

        // Requests: sync ones (py:call) run as they would outside any loop.
        let max_batch = this.link.max_batch();
        if this.link.has_requests() {
            this.link.serve_requests(py, max_batch);
        }

        // Timers that are due.
        let resolution: f64 = slf.getattr("_clock_resolution")?.extract()?;
        let end_time = monotonic() + resolution;
        {
            let mut timers = this.timers.lock();
            let mut ready = this.ready.borrow_mut(py);
            while let Some(head) = timers.heap.peek() {
                if head.when >= end_time {
                    break;
                }
                if let Some(s) = timers.heap.pop() {
                    s.handle.get().scheduled.store(false, Ordering::Relaxed);
                    ready.push_back(s.handle.into_any());
                }
            }
        }

        // Callbacks ready now, at most one batch; later ones wait for the next iteration.
        let ntodo = this.ready.borrow_mut(py).len().min(max_batch);
        let debug = this.debug.load(Ordering::Relaxed);
        for _ in 0..ntodo {
            let Some(item) = this.ready.borrow_mut(py).pop_front() else { break };
            let item = item.into_bound(py);
            if debug {
                Self::run_debug(slf, &item)?;
            } else {
                Self::run_item(py, &item)?;
            }
            this.spares.keep(item);
        }

        // One-shot watches whose readiness was handled are armed again.
        let watched = this.watched.lock();
        for (fd, dir) in rearm {
            if watched.contains(&(fd, dir)) {
                this.link.command(Command::Rearm(fd, dir));
            }
        }
        drop(watched);
        if this.link.is_closing() {
            this.stopping.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// How many spent handles the loop keeps for reuse (for tests).
    #[getter]
    fn _spare_handles(&self, py: Python<'_>) -> usize {
        self.spares.len(py)
    }

    #[getter]
    fn _ready(slf: &Bound<'_, Self>) -> ReadyView {
        ReadyView { core: slf.clone().unbind() }
    }

    /// asyncio's `__init__` assigns a new deque; only its (empty) contents matter.
    #[setter(_ready)]
    fn set_ready(&self, items: &Bound<'_, PyAny>) -> PyResult<()> {
        // Iterating may run Python code: collected before the queue is borrowed.
        let new = items.try_iter()?.map(|item| item.map(Bound::unbind)).collect::<PyResult<VecDeque<_>>>()?;
        // The old handles are dropped after the borrow ends, as in `ReadyView::clear`.
        let old = std::mem::replace(&mut *self.ready.borrow_mut(items.py()), new);
        drop(old);
        Ok(())
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> ScheduledView {
        ScheduledView { core: slf.clone().unbind() }
    }

    #[setter(_scheduled)]
    fn set_scheduled(&self, items: &Bound<'_, PyAny>) -> PyResult<()> {
        // Iterating and releasing the old handles may run Python code: neither under the lock.
        let handles = items
            .try_iter()?
            .map(|item| Ok(item?.cast_into::<TimerHandle>()?.unbind()))
            .collect::<PyResult<Vec<_>>>()?;
        let old = {
            let mut timers = self.timers.lock();
            let old = std::mem::take(&mut timers.heap);
            for handle in handles {
                timers.seq += 1;
                let seq = timers.seq;
                timers.heap.push(Scheduled { when: handle.get().when, seq, handle });
            }
            old
        };
        drop(old);
        Ok(())
    }

    #[getter]
    fn _timer_cancelled_count(&self) -> usize {
        self.timer_cancelled_count.load(Ordering::Relaxed)
    }

    #[setter(_timer_cancelled_count)]
    fn set_timer_cancelled_count(&self, n: usize) {
        self.timer_cancelled_count.store(n, Ordering::Relaxed);
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[setter(_stopping)]
    fn set_stopping(&self, v: bool) {
        self.stopping.store(v, Ordering::Relaxed);
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    #[setter(_closed)]
    fn set_closed(&self, v: bool) {
        self.closed.store(v, Ordering::Relaxed);
    }

    #[getter]
    fn _debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    #[setter(_debug)]
    fn set_debug(&self, v: bool) {
        self.debug.store(v, Ordering::Relaxed);
    }
}

fn mask(dir: Dir) -> u32 {
    match dir {
        Dir::Read => EVENT_READ,
        Dir::Write => EVENT_WRITE,
    }
}

/// `loop._ready`: the ready queue, deque-like.
#[pyclass(module = "_pybeam", name = "ReadyView", frozen)]
pub struct ReadyView {
    core: Py<LoopCore>,
}

#[pymethods]
impl ReadyView {
    fn append(&self, py: Python<'_>, item: Py<PyAny>) {
        self.core.get().ready.borrow_mut(py).push_back(item);
    }

    fn appendleft(&self, py: Python<'_>, item: Py<PyAny>) {
        self.core.get().ready.borrow_mut(py).push_front(item);
    }

    fn popleft(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.core.get().ready.borrow_mut(py).pop_front().ok_or_else(|| PyIndexError::new_err("pop from an empty deque"))
    }

    fn clear(&self, py: Python<'_>) {
        // The handles are dropped after the borrow ends: dropping one may run Python code.
        let items = std::mem::take(&mut *self.core.get().ready.borrow_mut(py));
        drop(items);
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.core.get().ready.borrow_mut(py).len()
    }

    fn __bool__(&self, py: Python<'_>) -> bool {
        !self.core.get().ready.borrow_mut(py).is_empty()
    }

    fn __getitem__(&self, py: Python<'_>, i: isize) -> PyResult<Py<PyAny>> {
        let ready = self.core.get().ready.borrow_mut(py);
        let idx = if i < 0 { ready.len() as isize + i } else { i };
        ready
            .get(usize::try_from(idx).map_err(|_| PyIndexError::new_err("deque index out of range"))?)
            .map(|h| h.clone_ref(py))
            .ok_or_else(|| PyIndexError::new_err("deque index out of range"))
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let items: Vec<Py<PyAny>> = self.core.get().ready.borrow_mut(py).iter().map(|h| h.clone_ref(py)).collect();
        PyList::new(py, items)?.try_iter().map(|i| i.into_any())
    }
}

/// `loop._scheduled`: the timer heap, list-like (index 0 is the earliest).
#[pyclass(module = "_pybeam", name = "ScheduledView", frozen)]
pub struct ScheduledView {
    core: Py<LoopCore>,
}

impl ScheduledView {
    fn sorted(&self, py: Python<'_>) -> Vec<Py<TimerHandle>> {
        let timers = self.core.get().timers.lock();
        let mut all: Vec<&Scheduled> = timers.heap.iter().collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter().map(|s| s.handle.clone_ref(py)).collect()
    }
}

#[pymethods]
impl ScheduledView {
    fn clear(&self) {
        // Released after the lock: a handle's release may run Python code.
        let old = std::mem::take(&mut self.core.get().timers.lock().heap);
        drop(old);
    }

    fn __len__(&self) -> usize {
        self.core.get().timers.lock().heap.len()
    }

    fn __bool__(&self) -> bool {
        !self.core.get().timers.lock().heap.is_empty()
    }

    fn __getitem__(&self, py: Python<'_>, i: isize) -> PyResult<Py<TimerHandle>> {
        let all = self.sorted(py);
        let idx = if i < 0 { all.len() as isize + i } else { i };
        usize::try_from(idx)
            .ok()
            .and_then(|i| all.get(i))
            .map(|h| h.clone_ref(py))
            .ok_or_else(|| PyIndexError::new_err("list index out of range"))
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.sorted(py))?.try_iter().map(|i| i.into_any())
    }
}
