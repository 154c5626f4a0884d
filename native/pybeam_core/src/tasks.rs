//! Async jobs as asyncio tasks on a loop thread's own asyncio loop: `py:async_call`,
//! `py:async_gather` and `py:async_stream`.
//!
//! A request for one of them starts its task(s) and returns at once; a done callback turns
//! each finished task into a completion, which leaves with the loop's next batch (one
//! message per loop iteration). At most `max_tasks` tasks run at once per loop: later items
//! wait in FIFO order, as they would behind an `asyncio.Semaphore`. A caller that gives up
//! has its tasks cancelled and its result dropped.
//!
//! Nothing here calls Python while holding the `Tasks` lock: Python code (a task's
//! `__del__`, a done callback) may come back into this module.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Weak;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::aio::helpers;
use crate::jobs::{call_with, python_error, value_of, CallError, CallTarget, Name, Outcome};
use crate::loop_thread::{Completion, Host, Loop};
use crate::value::Value;

/// What a completion carries, so that the host can address it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultKind {
    /// A sync request's result.
    Call,
    /// An async call's or a gather's result.
    Async,
    /// One item of a stream.
    StreamData,
    /// The end of a stream: `Ok(None)` when exhausted, else why it failed.
    StreamEnd,
}

pub(crate) enum Shape {
    Single,
    Gather,
    /// Items go out as they come; the event process grants credit for more.
    Stream { window: usize },
}

struct AsyncJob<R> {
    /// `None` once the caller gave up: the result is dropped.
    reply: Option<R>,
    shape: Shape,
    results: Vec<Option<Outcome>>,
    remaining: usize,
    tasks: Vec<Py<PyAny>>,
    /// A stream's `erlang._stream.Credit`.
    credit: Option<Py<PyAny>>,
    /// Why a stream item could not be converted: the stream ends with it.
    failure: Option<CallError>,
}

/// The function the previous item of a job resolved to: a gather of many calls to one
/// function looks it up once per batch of starts, not once per item.
struct Resolved<'py> {
    id: u64,
    module: Name,
    function: Name,
    callable: Bound<'py, PyAny>,
}

pub(crate) struct Start {
    id: u64,
    index: usize,
    target: CallTarget,
}

pub(crate) struct Tasks<R> {
    jobs: HashMap<u64, AsyncJob<R>>,
    deferred: VecDeque<Start>,
    /// Tasks started and not yet done (the gate counts these).
    running: usize,
    /// Ids whose caller gave up, for the loop thread to cancel.
    cancels: Vec<u64>,
    /// Stream credit granted by the event process.
    credits: Vec<(u64, usize)>,
    /// Completions made on the loop thread, sent with the next batch.
    pub(crate) finished: Vec<Completion<R>>,
}

impl<R> Default for Tasks<R> {
    fn default() -> Self {
        Tasks {
            jobs: HashMap::new(),
            deferred: VecDeque::new(),
            running: 0,
            cancels: Vec::new(),
            credits: Vec::new(),
            finished: Vec::new(),
        }
    }
}

impl<R> Tasks<R> {
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn waiting(&self) -> usize {
        self.deferred.len()
    }

    /// The callers of every job still pending, and how each is answered, for a loop that
    /// is going away.
    pub(crate) fn take_replies(&mut self) -> Vec<(u64, R, ResultKind)> {
        self.deferred.clear();
        self.jobs
            .drain()
            .filter_map(|(id, job)| {
                let kind = match job.shape {
                    Shape::Stream { .. } => ResultKind::StreamEnd,
                    Shape::Single | Shape::Gather => ResultKind::Async,
                };
                job.reply.map(|r| (id, r, kind))
            })
            .collect()
    }
}

/// What the Python-side callbacks below need of their loop.
pub(crate) trait TaskSink: Send + Sync {
    fn task_done(&self, py: Python<'_>, id: u64, index: usize, task: &Bound<'_, PyAny>);
    fn stream_item(&self, py: Python<'_>, id: u64, item: &Bound<'_, PyAny>) -> PyResult<()>;
}

/// The done callback of a task started for a job.
#[pyclass(module = "_pybeam", name = "TaskDone", frozen)]
pub struct TaskDone {
    id: u64,
    index: usize,
    sink: Weak<dyn TaskSink>,
}

#[pymethods]
impl TaskDone {
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) {
        if let Some(sink) = self.sink.upgrade() {
            sink.task_done(py, self.id, self.index, task);
        }
    }
}

/// Hands one stream item to the loop, which sends it to the event process.
#[pyclass(module = "_pybeam", name = "StreamEmit", frozen)]
pub struct StreamEmit {
    id: u64,
    sink: Weak<dyn TaskSink>,
}

#[pymethods]
impl StreamEmit {
    fn __call__(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.sink.upgrade() {
            Some(sink) => sink.stream_item(py, self.id, item),
            None => Ok(()),
        }
    }
}

fn is_coroutine(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object and the GIL is held (it is bound).
    unsafe { pyo3::ffi::PyCoro_CheckExact(obj.as_ptr()) != 0 }
}

/// The outcome of a finished task.
fn task_outcome(py: Python<'_>, task: &Bound<'_, PyAny>) -> Outcome {
    match task.call_method0(pyo3::intern!(py, "result")) {
        Ok(value) => value_of(&value),
        Err(e) if e.is_instance_of::<pyo3::exceptions::asyncio::CancelledError>(py) => Err(CallError::Cancelled),
        Err(e) => Err(python_error(py, &e)),
    }
}

/// How a loop makes tasks: `asyncio.Task(coro, loop=loop, name=...)` directly, as
/// `BaseEventLoop.create_task` does when no task factory is set and debug mode is off;
/// otherwise through `create_task` itself.
///
/// Our tasks are named after the call that made them (`py:async_call`, ...): a shared
/// name costs nothing, where Python 3.11 formats a fresh `Task-N` string for each task
/// (about 4% of a gather's time on the loop thread).
struct TaskFactory<'py> {
    aio: Bound<'py, PyAny>,
    /// `asyncio.Task` when tasks can be made directly.
    direct: Option<Bound<'py, PyAny>>,
    /// The keyword arguments: `name`, and `loop` for the direct path.
    kwargs: Bound<'py, PyDict>,
}

static TASK_TYPE: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

impl<'py> TaskFactory<'py> {
    fn of(py: Python<'py>, aio: &Bound<'py, PyAny>) -> Self {
        let plain = aio.getattr(pyo3::intern!(py, "_task_factory")).is_ok_and(|f| f.is_none())
            && !aio.call_method0(pyo3::intern!(py, "get_debug")).and_then(|d| d.is_truthy()).unwrap_or(true);
        let direct = plain
            .then(|| TASK_TYPE.get_or_try_init(py, || -> PyResult<_> { Ok(py.import("asyncio")?.getattr("Task")?.unbind()) }))
            .and_then(|t| t.ok())
            .map(|t| t.bind(py).clone());
        // The direct path needs `loop=aio`; if it cannot be set, tasks go through create_task.
        let kwargs = PyDict::new(py);
        let direct = direct.filter(|_| kwargs.set_item(pyo3::intern!(py, "loop"), aio).is_ok());
        TaskFactory { aio: aio.clone(), direct, kwargs }
    }

    fn task(&self, coro: Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
        let py = coro.py();
        self.kwargs.set_item(pyo3::intern!(py, "name"), name)?;
        match &self.direct {
            Some(task_type) => task_type.call((coro,), Some(&self.kwargs)),
            None => self.aio.call_method(pyo3::intern!(py, "create_task"), (coro,), Some(&self.kwargs)),
        }
    }
}

/// A gather's list of results, or the failures by 1-based index.
fn gathered(results: Vec<Option<Outcome>>) -> Outcome {
    let mut values = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Some(Ok(v)) => values.push(v),
            Some(Err(e)) => failures.push((i + 1, e)),
            None => failures.push((i + 1, CallError::Internal("gather item never finished".into()))),
        }
    }
    if failures.is_empty() {
        Ok(Value::List(values))
    } else {
        Err(CallError::GatherFailed(failures))
    }
}

impl<H: Host> Loop<H> {
    /// Registers an async job taken from the queue and starts what the gate allows.
    /// Returns a completion only when it is answered at once.
    pub(crate) fn begin_async(
        &self,
        py: Python<'_>,
        id: u64,
        reply: H::Reply,
        shape: Shape,
        targets: Vec<CallTarget>,
    ) -> Option<Completion<H::Reply>> {
        let kind = match shape {
            Shape::Stream { .. } => ResultKind::StreamEnd,
            Shape::Single | Shape::Gather => ResultKind::Async,
        };
        if targets.is_empty() {
            return Some(Completion { id, reply, outcome: Ok(Value::List(Vec::new())), kind });
        }
        let Some(aio) = self.aio(py) else {
            return Some(Completion { id, reply, outcome: Err(CallError::NoAsyncio), kind });
        };
        let n = targets.len();
        {
            let mut t = self.tasks.lock();
            t.jobs.insert(
                id,
                AsyncJob {
                    reply: Some(reply),
                    shape,
                    results: (0..n).map(|_| None).collect(),
                    remaining: n,
                    tasks: Vec::new(),
                    credit: None,
                    failure: None,
                },
            );
            t.deferred.extend(targets.into_iter().enumerate().map(|(index, target)| Start { id, index, target }));
        }
        // Registered first, then checked: a cancel that races with this either finds the
        // job registered or is seen here.
        if self.take_cancelled(id) {
            let removed = {
                let mut t = self.tasks.lock();
                t.deferred.retain(|s| s.id != id);
                t.jobs.remove(&id)
            };
            drop(removed);
            self.count_skipped();
            return None;
        }
        self.pump(py, &aio);
        None
    }

    /// Starts waiting items while the gate has room, with `aio` as the running loop (an
    /// async function may ask for it).
    fn pump(&self, py: Python<'_>, aio: &Bound<'_, PyAny>) {
        let next = || {
            let mut t = self.tasks.lock();
            if t.running >= self.config().max_tasks {
                return None;
            }
            let start = t.deferred.pop_front()?;
            t.running += 1;
            Some(start)
        };
        let Some(first) = next() else { return };
        let running = helpers::get_running_loop(py).ok();
        let switch = !running.as_ref().is_some_and(|r| r.is(aio));
        if switch {
            let _ = helpers::set_running_loop(py, aio);
        }
        let factory = TaskFactory::of(py, aio);
        let mut last = None;
        let mut start = Some(first);
        while let Some(item) = start {
            self.start_item(py, aio, &factory, &mut last, item);
            start = next();
        }
        if switch {
            let none = py.None().into_bound(py);
            let _ = helpers::set_running_loop(py, running.as_ref().unwrap_or(&none));
        }
    }

    fn release_slot(&self) {
        let mut t = self.tasks.lock();
        t.running = t.running.saturating_sub(1);
    }

    /// Calls the item's function (the asyncio loop is running) and makes its task.
    fn start_item<'py>(
        &self,
        py: Python<'py>,
        aio: &Bound<'py, PyAny>,
        factory: &TaskFactory<'py>,
        last: &mut Option<Resolved<'py>>,
        start: Start,
    ) {
        let Start { id, index, target } = start;
        let (window, name) = {
            let t = self.tasks.lock();
            match t.jobs.get(&id).map(|j| &j.shape) {
                Some(Shape::Stream { window }) => (Some(*window), pyo3::intern!(py, "py:async_stream")),
                Some(Shape::Gather) => (None, pyo3::intern!(py, "py:async_gather")),
                Some(Shape::Single) => (None, pyo3::intern!(py, "py:async_call")),
                None => {
                    drop(t);
                    self.release_slot();
                    return;
                }
            }
        };
        let Some(sink) = self.task_sink() else { return };
        let made = (|| -> PyResult<Option<Bound<'_, PyAny>>> {
            let executor = self.executor().ok_or_else(|| PyTypeError::new_err("loop not ready"))?;
            let function = match last {
                Some(r) if r.id == id && r.module == target.module && r.function == target.function => r.callable.clone(),
                _ => {
                    let f = executor.resolve(py, &target)?;
                    let (module, function) = (target.module.clone(), target.function.clone());
                    *last = Some(Resolved { id, module, function, callable: f.clone() });
                    f
                }
            };
            let obj = call_with(py, &function, &target.args, &target.kwargs)?;
            if let Some(window) = window {
                let stream = py.import("erlang._stream")?;
                let credit = stream.getattr("Credit")?.call1((aio, window))?;
                let emit = Bound::new(py, StreamEmit { id, sink: sink.clone() })?;
                let driver = stream.getattr("drive")?.call1((obj, emit, &credit))?;
                if let Some(job) = self.tasks.lock().jobs.get_mut(&id) {
                    job.credit = Some(credit.unbind());
                }
                return factory.task(driver, name).map(Some);
            }
            if is_coroutine(&obj) {
                return factory.task(obj, name).map(Some);
            }
            if obj.hasattr("__await__")? {
                let kwargs = PyDict::new(py);
                kwargs.set_item("loop", aio)?;
                return py.import("asyncio")?.getattr("ensure_future")?.call((obj,), Some(&kwargs)).map(Some);
            }
            // A plain function: its value is the result.
            self.release_slot();
            self.item_done(id, index, value_of(&obj));
            Ok(None)
        })();
        match made {
            Ok(Some(task)) => {
                let added = helpers::new_untracked(py, TaskDone { id, index, sink })
                    .and_then(|done| task.call_method1(pyo3::intern!(py, "add_done_callback"), (done,)));
                if let Err(e) = added {
                    self.release_slot();
                    self.item_done(id, index, Err(python_error(py, &e)));
                    return;
                }
                if let Some(job) = self.tasks.lock().jobs.get_mut(&id) {
                    job.tasks.push(task.unbind());
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.release_slot();
                self.item_done(id, index, Err(python_error(py, &e)));
            }
        }
    }

    /// One item of job `id` finished; a job whose items are all done is answered.
    fn item_done(&self, id: u64, index: usize, outcome: Outcome) {
        let mut t = self.tasks.lock();
        let Some(job) = t.jobs.get_mut(&id) else { return };
        let finished = match job.shape {
            Shape::Single => Some((outcome, ResultKind::Async)),
            Shape::Gather => {
                if let Some(slot) = job.results.get_mut(index) {
                    *slot = Some(outcome);
                }
                job.remaining -= 1;
                (job.remaining == 0).then(|| (gathered(std::mem::take(&mut job.results)), ResultKind::Async))
            }
            Shape::Stream { .. } => {
                let end = match job.failure.take() {
                    Some(e) => Err(e),
                    None => outcome.map(|_| Value::None),
                };
                Some((end, ResultKind::StreamEnd))
            }
        };
        let Some((outcome, kind)) = finished else { return };
        if let Some(mut job) = t.jobs.remove(&id) {
            if let Some(reply) = job.reply.take() {
                t.finished.push(Completion { id, reply, outcome, kind });
            }
            // Its tasks and credit are released after the lock.
            drop(t);
            drop(job);
        }
    }

    /// Cancels the tasks of jobs whose callers gave up, hands streams their credit, and
    /// starts the items that waited for a free slot.
    pub(crate) fn run_task_control(&self, py: Python<'_>) {
        if !self.tasks_signal.swap(false, Ordering::SeqCst) {
            return;
        }
        let (cancels, credits) = {
            let mut t = self.tasks.lock();
            (std::mem::take(&mut t.cancels), std::mem::take(&mut t.credits))
        };
        for id in cancels {
            let removed = {
                let mut t = self.tasks.lock();
                t.deferred.retain(|s| s.id != id);
                t.jobs.remove(&id)
            };
            if let Some(job) = removed {
                for task in &job.tasks {
                    if let Err(e) = task.bind(py).call_method0("cancel") {
                        e.print(py);
                    }
                }
            }
        }
        for (id, n) in credits {
            let credit = self.tasks.lock().jobs.get(&id).and_then(|j| j.credit.as_ref().map(|c| c.clone_ref(py)));
            if let Some(credit) = credit {
                if let Err(e) = credit.bind(py).call_method1("grant", (n,)) {
                    e.print(py);
                }
            }
        }
        if self.tasks.lock().waiting() > 0 {
            if let Some(aio) = self.aio(py) {
                self.pump(py, &aio);
            }
        }
    }

    /// From a scheduler: the caller of async job `id` gave up.
    pub(crate) fn cancel_task(&self, id: u64) {
        let mut t = self.tasks.lock();
        if let Some(job) = t.jobs.get_mut(&id) {
            job.reply = None;
            t.cancels.push(id);
            drop(t);
            self.tasks_signal.store(true, Ordering::SeqCst);
            self.wake_thread();
        }
    }

    /// From a scheduler: the event process lets stream `id` send `n` more items.
    pub fn grant(&self, id: u64, n: usize) {
        self.tasks.lock().credits.push((id, n));
        self.tasks_signal.store(true, Ordering::SeqCst);
        self.wake_thread();
    }
}

impl<H: Host> TaskSink for Loop<H> {
    fn task_done(&self, py: Python<'_>, id: u64, index: usize, task: &Bound<'_, PyAny>) {
        self.release_slot();
        self.item_done(id, index, task_outcome(py, task));
        // Waiting items start at the loop's next task control: once per loop iteration,
        // not once per finished task.
        if self.tasks.lock().waiting() > 0 {
            self.tasks_signal.store(true, Ordering::SeqCst);
        }
    }

    fn stream_item(&self, _py: Python<'_>, id: u64, item: &Bound<'_, PyAny>) -> PyResult<()> {
        let converted = value_of(item);
        let mut t = self.tasks.lock();
        let Some(job) = t.jobs.get_mut(&id) else { return Ok(()) };
        match converted {
            Ok(v) => {
                if job.reply.is_some() {
                    let reply = self.host().event_reply();
                    t.finished.push(Completion { id, reply, outcome: Ok(v), kind: ResultKind::StreamData });
                }
                Ok(())
            }
            Err(e) => {
                job.failure = Some(e);
                Err(PyTypeError::new_err("a stream item has no Erlang form"))
            }
        }
    }
}
