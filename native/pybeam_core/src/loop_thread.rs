//! One native loop: a bounded request queue, what its event process delivers, and (for a
//! loop made from Erlang) the OS thread that serves both.
//!
//! A threaded loop's thread runs an asyncio `erlang.ErlangEventLoop` for its whole life.
//! Each iteration of that loop (`LoopCore::_run_once`) waits here, GIL released, for
//! requests, deliveries from the event process, or a wake-up; then serves up to
//! `max_batch` requests under the GIL it holds, then runs due timers and up to `max_batch`
//! ready callbacks. Every completion of a batch goes to the host at once (one message).
//!
//! Idle, the thread spins briefly before parking, because a cross-thread wake-up costs
//! tens of microseconds on small VMs and a sequential caller is usually back within a few.
//!
//! A loop made from Python (`erlang.new_event_loop()`) has no thread of its own: the thread
//! that runs it waits here the same way.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::aio::helpers;
use crate::aio::link::{Command, Delivered, LinkHandle, LinkOps};
use crate::callbacks;
use crate::interpreter::ThreadAttachment;
use crate::interrupt::{interrupt, RunState};
use crate::jobs::{CallError, Executor, Job, Outcome};
use crate::mailbox::{spin_then_park, Mailbox};
use crate::tasks::{ResultKind, Shape, TaskSink, Tasks};

/// The BEAM-facing side of a loop: where completions and commands go.
pub trait Host: Send + Sync + 'static {
    /// Whatever routes a result back to its caller (for the NIF: the caller's alias).
    type Reply: Send + 'static;
    /// The reply that addresses the event process itself (stream items go there).
    fn event_reply(&self) -> Self::Reply;
    /// Receives every completion that is ready, in one call; called without the GIL.
    /// Must leave `done` empty.
    fn deliver(&self, done: &mut Vec<Completion<Self::Reply>>);
    /// Sends the loop's queued commands to its event process, in one message; must leave
    /// `commands` empty.
    fn send_commands(&self, commands: &mut Vec<Command>);
    /// The loop has ended: `None` when closed, `Some(why)` when its thread crashed.
    fn exited(&self, crash: Option<String>);
}

pub struct Request<R> {
    pub id: u64,
    pub reply: R,
    pub job: Job,
}

pub struct Completion<R> {
    pub id: u64,
    pub reply: R,
    pub outcome: Outcome,
    pub kind: ResultKind,
}

#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub name: String,
    /// Most requests, and most ready callbacks, run per iteration (per GIL hold).
    pub max_batch: usize,
    /// Queue bound; a full queue answers `overloaded`.
    pub capacity: usize,
    /// How long an idle loop polls before parking.
    pub spin: Duration,
    /// Most async tasks (async calls, gather items, streams) running at once.
    pub max_tasks: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            name: "pybeam-loop".into(),
            max_batch: 128,
            capacity: 20_000,
            spin: Duration::from_micros(50),
            max_tasks: 512,
        }
    }
}

/// A refused submission hands the request(s) back.
pub enum SubmitError<T> {
    Overloaded(T),
    Closed(T),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoopStats {
    /// Requests queued and not yet taken.
    pub queued: usize,
    /// Requests taken and not yet completed.
    pub running: usize,
    pub completed: u64,
    pub batches: u64,
    /// Queued requests skipped because their caller had timed out.
    pub skipped: u64,
    pub closed: bool,
    /// Async tasks running, and async items waiting for a slot.
    pub tasks: usize,
    pub tasks_waiting: usize,
}

/// A timed-out request that may still be waiting to start. It is forgotten once as many
/// requests have started as were started or waiting when it was cancelled: FIFO order
/// guarantees it has been seen by then.
struct Cancelled {
    id: u64,
    forget_after: u64,
}

pub struct Loop<H: Host> {
    /// Itself, for the Python callbacks of its tasks (weak: tasks must not keep it alive).
    me: Weak<Self>,
    config: LoopConfig,
    host: H,
    requests: Mailbox<Request<H::Reply>>,
    /// What the event process delivered and the loop has not taken yet.
    inbox: Mutex<Vec<Delivered>>,
    inbox_full: AtomicBool,
    /// Set by `wake` (call_soon_threadsafe), consumed by the waiting thread.
    woken: AtomicBool,
    /// The thread currently (or last) waiting in `wait`.
    waiter: Mutex<Option<Thread>>,
    commands: Mutex<Vec<Command>>,
    closing: AtomicBool,
    run_state: Arc<RunState>,
    executor: OnceLock<Executor>,
    cancelled: Mutex<Vec<Cancelled>>,
    cancelled_count: AtomicUsize,
    started: AtomicU64,
    in_batch: AtomicUsize,
    completed: AtomicU64,
    batches: AtomicU64,
    skipped: AtomicU64,
    pub(crate) tasks: Mutex<Tasks<H::Reply>>,
    /// Set when task cancels or stream credits wait for the loop thread.
    pub(crate) tasks_signal: AtomicBool,
    /// The thread's asyncio loop, which async jobs run on (threaded loops only).
    aio: Mutex<Option<Py<PyAny>>>,
}

impl<H: Host> Loop<H> {
    fn build(config: LoopConfig, host: H) -> Arc<Self> {
        Arc::new_cyclic(|me| Loop {
            me: me.clone(),
            requests: Mailbox::new(config.capacity),
            config,
            host,
            inbox: Mutex::new(Vec::new()),
            inbox_full: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            waiter: Mutex::new(None),
            commands: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            run_state: Arc::new(RunState::default()),
            executor: OnceLock::new(),
            cancelled: Mutex::new(Vec::new()),
            cancelled_count: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            in_batch: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            tasks: Mutex::new(Tasks::default()),
            tasks_signal: AtomicBool::new(false),
            aio: Mutex::new(None),
        })
    }

    /// Creates the loop and starts its thread.
    pub fn start(config: LoopConfig, host: H) -> io::Result<Arc<Self>> {
        let lp = Self::build(config, host);
        let worker = lp.clone();
        let handle = std::thread::Builder::new()
            .name(lp.config.name.clone())
            // Conversions recurse up to MAX_DEPTH and Python C code recurses too.
            .stack_size(16 << 20)
            .spawn(move || worker.thread_main())?;
        lp.requests.set_consumer(handle.thread().clone());
        *lp.waiter.lock() = Some(handle.thread().clone());
        Ok(lp)
    }

    /// Creates a loop without a thread: a Python thread runs it (`erlang.new_event_loop()`).
    pub fn threadless(config: LoopConfig, host: H) -> Arc<Self> {
        Self::build(config, host)
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    pub fn config(&self) -> &LoopConfig {
        &self.config
    }

    pub fn submit(&self, req: Request<H::Reply>) -> Result<(), SubmitError<Request<H::Reply>>> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(req));
        }
        self.requests.push(req).map_err(SubmitError::Overloaded)
    }

    /// Queues all of `reqs` in order, or none of them.
    pub fn submit_many(&self, reqs: Vec<Request<H::Reply>>) -> Result<(), SubmitError<Vec<Request<H::Reply>>>> {
        if self.closing.load(Ordering::Acquire) {
            return Err(SubmitError::Closed(reqs));
        }
        self.requests.push_all(reqs).map_err(SubmitError::Overloaded)
    }

    /// What the event process delivers: queued for the loop, whose thread is woken.
    pub fn deliver(&self, events: Vec<Delivered>) {
        if events.is_empty() {
            return;
        }
        self.inbox.lock().extend(events);
        self.inbox_full.store(true, Ordering::SeqCst);
        self.unpark();
    }

    /// The caller of `id` gave up: skip it if still queued, interrupt it if running, cancel
    /// its tasks if it is an async job.
    pub fn cancel(&self, id: u64) {
        {
            let mut cancelled = self.cancelled.lock();
            let waiting = self.requests.len() + self.in_batch.load(Ordering::SeqCst);
            let forget_after = self.started.load(Ordering::SeqCst) + waiting as u64;
            cancelled.push(Cancelled { id, forget_after });
            self.cancelled_count.store(cancelled.len(), Ordering::SeqCst);
        }
        // Either the loop thread sees the entry above before it starts `id`, or we see `id`
        // running here; both orders are SeqCst, so the request cannot slip through.
        if self.run_state.running.load(Ordering::SeqCst) == id {
            interrupt(self.run_state.clone(), id);
        }
        self.cancel_task(id);
    }

    /// Stops the loop after its current request, which is interrupted; requests still
    /// queued are answered with `CallError::Closed`.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.requests.wake();
        self.unpark();
        // Whoever waited for the running request has gone with the loop: stop it early.
        let running = self.run_state.running.load(Ordering::SeqCst);
        if running != 0 {
            interrupt(self.run_state.clone(), running);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> LoopStats {
        let (tasks, tasks_waiting) = {
            let t = self.tasks.lock();
            (t.running(), t.waiting())
        };
        LoopStats {
            tasks,
            tasks_waiting,
            queued: self.requests.len(),
            running: self.in_batch.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            closed: self.is_closed(),
        }
    }

    fn unpark(&self) {
        if let Some(t) = &*self.waiter.lock() {
            t.unpark();
        }
    }

    pub(crate) fn wake_thread(&self) {
        self.unpark();
    }

    pub(crate) fn executor(&self) -> Option<&Executor> {
        self.executor.get()
    }

    pub(crate) fn aio<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.aio.lock().as_ref().map(|a| a.bind(py).clone())
    }

    pub(crate) fn task_sink(&self) -> Option<Weak<dyn TaskSink>> {
        let me: Weak<dyn TaskSink> = self.me.clone();
        (me.strong_count() > 0).then_some(me)
    }

    pub(crate) fn count_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    fn thread_main(self: Arc<Self>) {
        let crash = catch_unwind(AssertUnwindSafe(|| self.serve())).err().map(panic_message);
        let mut done = Vec::new();
        self.drain_on_close(&mut done);
        self.host.exited(crash);
    }

    fn serve(self: &Arc<Self>) {
        let _attachment = ThreadAttachment::new();
        Python::attach(|py| {
            // SAFETY: plain query of the current thread's identifier.
            let ident = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
            self.run_state.thread_ident.store(ident as u64, Ordering::SeqCst);
            match Executor::new(py) {
                Ok(e) => {
                    let _ = self.executor.set(e);
                }
                Err(e) => panic!("could not set up the loop's Python globals: {e}"),
            }
            if let Some(me) = self.me.upgrade() {
                callbacks::set_current_link(Some(me as Arc<dyn LinkOps>));
            }
            match self.asyncio_loop(py) {
                Ok(lp) => {
                    *self.aio.lock() = Some(lp.clone().unbind());
                    self.run_asyncio(py, &lp);
                    let released = self.aio.lock().take();
                    drop(released);
                }
                Err(e) => {
                    // Without the `erlang` package the loop still serves sync calls.
                    eprintln!("pybeam: no asyncio loop on {} ({e}); serving calls only", self.config.name);
                    self.serve_plain(py);
                }
            }
            callbacks::set_current_link(None);
        });
    }

    fn asyncio_loop<'py>(self: &Arc<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let link = Bound::new(py, LinkHandle::new(self.clone() as Arc<dyn LinkOps>))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("_link", link)?;
        py.import("erlang._loop")?.getattr("ErlangEventLoop")?.call((), Some(&kwargs))
    }

    /// Runs the thread's asyncio loop until the native loop closes. An exception that
    /// escapes `run_forever` (SystemExit or KeyboardInterrupt raised by a callback) is
    /// reported and the loop goes on: only the event process ends a loop.
    fn run_asyncio(&self, py: Python<'_>, lp: &Bound<'_, PyAny>) {
        while !self.closing.load(Ordering::Acquire) {
            if let Err(e) = lp.call_method0("run_forever") {
                e.print(py);
            }
        }
        if let Err(e) = lp.call_method0("close") {
            e.print(py);
        }
    }

    fn serve_plain(&self, py: Python<'_>) {
        while !self.closing.load(Ordering::Acquire) {
            if self.serve_requests(py, self.config.max_batch) == 0 {
                py.detach(|| self.wait(None));
            }
        }
    }

    fn execute(&self, py: Python<'_>, executor: &Executor, req: Request<H::Reply>) -> Option<Completion<H::Reply>> {
        let Request { id, reply, job } = req;
        let (shape, targets) = match job {
            Job::Async(t) => (Shape::Single, vec![t]),
            Job::Gather(ts) => (Shape::Gather, ts),
            Job::Stream { target, window } => (Shape::Stream { window }, vec![target]),
            job => return self.execute_sync(py, executor, id, reply, job),
        };
        let answer = catch_unwind(AssertUnwindSafe(|| self.begin_async(py, id, reply, shape, targets)))
            .unwrap_or_else(|p| {
                eprintln!("pybeam: async job {id} failed to start: {}", panic_message(p));
                None
            });
        self.started.fetch_add(1, Ordering::SeqCst);
        answer
    }

    fn execute_sync(
        &self,
        py: Python<'_>,
        executor: &Executor,
        id: u64,
        reply: H::Reply,
        job: Job,
    ) -> Option<Completion<H::Reply>> {
        // A request served while another waits for Erlang (erlang.call) nests inside it.
        let outer = self.run_state.running.swap(id, Ordering::SeqCst);
        let cancelled = self.take_cancelled(id);
        self.started.fetch_add(1, Ordering::SeqCst);
        if cancelled {
            self.run_state.running.store(outer, Ordering::SeqCst);
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| executor.run(py, job)))
            .unwrap_or_else(|p| Err(CallError::Internal(panic_message(p))));
        self.run_state.running.store(outer, Ordering::SeqCst);
        self.run_state.clear_stale_interrupt(py, id);
        let kind = ResultKind::Call;
        match outcome {
            // Interrupted because the loop is closing: its caller still gets an answer.
            Err(CallError::Interrupted) if self.closing.load(Ordering::Acquire) => {
                Some(Completion { id, reply, outcome: Err(CallError::Closed), kind })
            }
            // Interrupted because its caller timed out: nobody is waiting.
            Err(CallError::Interrupted) => None,
            outcome => Some(Completion { id, reply, outcome, kind }),
        }
    }

    /// True if `id` was cancelled; also forgets entries that can no longer be queued.
    pub(crate) fn take_cancelled(&self, id: u64) -> bool {
        if self.cancelled_count.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut cancelled = self.cancelled.lock();
        let found = cancelled.iter().position(|c| c.id == id).map(|i| cancelled.swap_remove(i));
        let started = self.started.load(Ordering::SeqCst);
        cancelled.retain(|c| c.forget_after > started);
        self.cancelled_count.store(cancelled.len(), Ordering::SeqCst);
        found.is_some()
    }

    /// Answers everything still queued, so that no caller waits for a loop that is gone.
    fn drain_on_close(&self, done: &mut Vec<Completion<H::Reply>>) {
        let closed = |id, reply, kind| Completion { id, reply, outcome: Err(CallError::Closed), kind };
        let (finished, pending) = {
            let mut t = self.tasks.lock();
            (std::mem::take(&mut t.finished), t.take_replies())
        };
        done.extend(finished);
        done.extend(pending.into_iter().map(|(id, reply, kind)| closed(id, reply, kind)));
        let mut batch = Vec::new();
        loop {
            if !done.is_empty() {
                self.host.deliver(done);
                done.clear();
            }
            if self.requests.take(self.config.max_batch, &mut batch) == 0 {
                break;
            }
            done.extend(batch.drain(..).map(|r| {
                let kind = r.job.result_kind();
                closed(r.id, r.reply, kind)
            }));
        }
    }

    fn has_work(&self) -> bool {
        self.inbox_full.load(Ordering::SeqCst)
            || !self.requests.is_empty()
            || self.woken.load(Ordering::SeqCst)
            || self.tasks_signal.load(Ordering::SeqCst)
            || self.closing.load(Ordering::Acquire)
    }

    fn take_inbox(&self) -> Vec<Delivered> {
        self.woken.store(false, Ordering::SeqCst);
        if !self.inbox_full.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.inbox.lock())
    }
}

impl<H: Host> LinkOps for Loop<H> {
    fn command(&self, cmd: Command) {
        self.commands.lock().push(cmd);
    }

    fn flush(&self) {
        let mut commands = std::mem::take(&mut *self.commands.lock());
        if !commands.is_empty() {
            self.host.send_commands(&mut commands);
        }
        let mut finished = std::mem::take(&mut self.tasks.lock().finished);
        if !finished.is_empty() {
            self.host.deliver(&mut finished);
        }
    }

    fn wait(&self, timeout: Option<Duration>) -> Vec<Delivered> {
        if self.has_work() || timeout == Some(Duration::ZERO) {
            return self.take_inbox();
        }
        *self.waiter.lock() = Some(std::thread::current());
        // Spin first: a reply to what this loop just did is often only microseconds away.
        spin_then_park(|| self.has_work(), self.config.spin, timeout.map(|t| Instant::now() + t));
        self.take_inbox()
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        self.unpark();
    }

    fn has_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    fn serve_requests(&self, py: Python<'_>, max: usize) -> usize {
        let Some(executor) = self.executor.get() else { return 0 };
        let mut batch = Vec::with_capacity(max.min(1024));
        let n = self.requests.take(max, &mut batch);
        if n == 0 {
            return 0;
        }
        self.in_batch.fetch_add(n, Ordering::SeqCst);
        // Sync requests run as they would outside any loop; async ones set the loop
        // themselves while they start.
        let running = helpers::get_running_loop(py).ok().filter(|l| !l.is_none());
        if running.is_some() {
            let _ = helpers::set_running_loop(py, &py.None().into_bound(py));
        }
        let mut done = Vec::with_capacity(n);
        for req in batch.drain(..) {
            if self.closing.load(Ordering::Acquire) {
                let kind = req.job.result_kind();
                done.push(Completion { id: req.id, reply: req.reply, outcome: Err(CallError::Closed), kind });
            } else if let Some(c) = self.execute(py, executor, req) {
                done.push(c);
            }
            self.in_batch.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(lp) = running {
            let _ = helpers::set_running_loop(py, &lp);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.completed.fetch_add(done.len() as u64, Ordering::Relaxed);
        if !done.is_empty() {
            py.detach(|| self.host.deliver(&mut done));
        }
        n
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn close(&self) {
        // A threaded loop is closed by its event process; a loop made from Python tells
        // its event process that it is done.
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.unpark();
            self.host.exited(None);
        }
    }

    fn max_batch(&self) -> usize {
        self.config.max_batch
    }

    fn deliver(&self, events: Vec<Delivered>) {
        Loop::deliver(self, events);
    }

    fn run_task_control(&self, py: Python<'_>) {
        Loop::run_task_control(self, py);
    }

    fn park_until(&self, done: &dyn Fn() -> bool, deadline: Option<Instant>) {
        *self.waiter.lock() = Some(std::thread::current());
        spin_then_park(|| done() || !self.requests.is_empty() || self.is_closing(), self.config.spin, deadline);
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}
