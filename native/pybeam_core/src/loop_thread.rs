//! One loop: a bounded request queue and the OS thread that serves it.
//!
//! The thread takes up to `max_batch` requests, runs them under one GIL hold, releases the
//! GIL, and hands every completion of the batch to the host at once (one message). When the
//! queue is empty it spins briefly, because a cross-thread wake-up costs tens of microseconds
//! on small VMs and a sequential caller is usually back within a few, then parks.
//!
//! The body of one iteration is `serve_batch`; the asyncio loop runs its ready callbacks in
//! the same iteration, so sync requests and asyncio callbacks share the thread fairly.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;

use crate::interpreter::ThreadAttachment;
use crate::interrupt::{interrupt, RunState};
use crate::jobs::{CallError, Executor, Job, Outcome};
use crate::mailbox::Mailbox;

/// The BEAM-facing side of a loop: where completions go.
pub trait Host: Send + Sync + 'static {
    /// Whatever routes a result back to its caller (for the NIF: the caller's alias).
    type Reply: Send + 'static;
    /// Receives every completion that is ready, in one call; called without the GIL.
    /// Must leave `done` empty.
    fn deliver(&self, done: &mut Vec<Completion<Self::Reply>>);
    /// The loop thread has ended: `None` when closed, `Some(why)` when it crashed.
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
}

#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub name: String,
    /// Most requests run per GIL hold.
    pub max_batch: usize,
    /// Queue bound; a full queue answers `overloaded`.
    pub capacity: usize,
    /// How long an idle thread polls the queue before parking.
    pub spin: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            name: "pybeam-loop".into(),
            max_batch: 128,
            capacity: 20_000,
            spin: Duration::from_micros(50),
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
}

/// A timed-out request that may still be waiting to start. It is forgotten once as many
/// requests have started as were started or waiting when it was cancelled: FIFO order
/// guarantees it has been seen by then.
struct Cancelled {
    id: u64,
    forget_after: u64,
}

pub struct Loop<H: Host> {
    config: LoopConfig,
    host: H,
    requests: Mailbox<Request<H::Reply>>,
    closing: AtomicBool,
    run_state: Arc<RunState>,
    cancelled: Mutex<Vec<Cancelled>>,
    cancelled_count: AtomicUsize,
    started: AtomicU64,
    in_batch: AtomicUsize,
    completed: AtomicU64,
    batches: AtomicU64,
    skipped: AtomicU64,
}

impl<H: Host> Loop<H> {
    /// Creates the loop and starts its thread.
    pub fn start(config: LoopConfig, host: H) -> io::Result<Arc<Self>> {
        let lp = Arc::new(Loop {
            requests: Mailbox::new(config.capacity),
            config,
            host,
            closing: AtomicBool::new(false),
            run_state: Arc::new(RunState::default()),
            cancelled: Mutex::new(Vec::new()),
            cancelled_count: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            in_batch: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let worker = lp.clone();
        let handle = std::thread::Builder::new()
            .name(lp.config.name.clone())
            // Conversions recurse up to MAX_DEPTH and Python C code recurses too.
            .stack_size(16 << 20)
            .spawn(move || worker.thread_main())?;
        lp.requests.set_consumer(handle.thread().clone());
        Ok(lp)
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

    /// The caller of `id` gave up: skip it if still queued, interrupt it if running.
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
    }

    /// Stops the thread after its current request, which is interrupted; requests still
    /// queued are answered with `CallError::Closed`.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.requests.wake();
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
        LoopStats {
            queued: self.requests.len(),
            running: self.in_batch.load(Ordering::SeqCst),
            completed: self.completed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            closed: self.is_closed(),
        }
    }

    fn thread_main(self: Arc<Self>) {
        let crash = catch_unwind(AssertUnwindSafe(|| self.serve())).err().map(panic_message);
        self.host.exited(crash);
    }

    fn serve(&self) {
        let _attachment = ThreadAttachment::new();
        let executor = Python::attach(|py| {
            // SAFETY: plain query of the current thread's identifier.
            let ident = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
            self.run_state.thread_ident.store(ident as u64, Ordering::SeqCst);
            Executor::new(py)
        });
        let executor = match executor {
            Ok(e) => e,
            Err(e) => panic!("could not set up the loop's Python globals: {e}"),
        };
        let mut batch = Vec::with_capacity(self.config.max_batch);
        let mut done = Vec::with_capacity(self.config.max_batch);
        while !self.closing.load(Ordering::Acquire) {
            if self.requests.take(self.config.max_batch, &mut batch) == 0 {
                self.idle();
                continue;
            }
            self.serve_batch(&executor, &mut batch, &mut done);
        }
        self.drain_on_close(&mut batch, &mut done);
        Python::attach(|_py| drop(executor));
    }

    fn serve_batch(
        &self,
        executor: &Executor,
        batch: &mut Vec<Request<H::Reply>>,
        done: &mut Vec<Completion<H::Reply>>,
    ) {
        self.in_batch.store(batch.len(), Ordering::SeqCst);
        Python::attach(|py| {
            for req in batch.drain(..) {
                if self.closing.load(Ordering::Acquire) {
                    done.push(Completion { id: req.id, reply: req.reply, outcome: Err(CallError::Closed) });
                } else if let Some(c) = self.execute(py, executor, req) {
                    done.push(c);
                }
                self.in_batch.fetch_sub(1, Ordering::SeqCst);
            }
        });
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.completed.fetch_add(done.len() as u64, Ordering::Relaxed);
        if !done.is_empty() {
            self.host.deliver(done);
            done.clear();
        }
    }

    fn execute(
        &self,
        py: Python<'_>,
        executor: &Executor,
        req: Request<H::Reply>,
    ) -> Option<Completion<H::Reply>> {
        let Request { id, reply, job } = req;
        self.run_state.running.store(id, Ordering::SeqCst);
        let cancelled = self.take_cancelled(id);
        self.started.fetch_add(1, Ordering::SeqCst);
        if cancelled {
            self.run_state.running.store(0, Ordering::SeqCst);
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| executor.run(py, job)))
            .unwrap_or_else(|p| Err(CallError::Internal(panic_message(p))));
        self.run_state.running.store(0, Ordering::SeqCst);
        self.run_state.clear_stale_interrupt(py, id);
        match outcome {
            // Interrupted because the loop is closing: its caller still gets an answer.
            Err(CallError::Interrupted) if self.closing.load(Ordering::Acquire) => {
                Some(Completion { id, reply, outcome: Err(CallError::Closed) })
            }
            // Interrupted because its caller timed out: nobody is waiting.
            Err(CallError::Interrupted) => None,
            outcome => Some(Completion { id, reply, outcome }),
        }
    }

    /// True if `id` was cancelled; also forgets entries that can no longer be queued.
    fn take_cancelled(&self, id: u64) -> bool {
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

    fn idle(&self) {
        let until = Instant::now() + self.config.spin;
        loop {
            // Reading the clock costs about 90 ns on these VMs: poll the queue in between.
            for _ in 0..64 {
                if !self.requests.is_empty() || self.closing.load(Ordering::Acquire) {
                    return;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                break;
            }
        }
        if self.requests.is_empty() && !self.closing.load(Ordering::Acquire) {
            std::thread::park();
        }
    }

    /// Answers everything still queued, so that no caller waits for a loop that is gone.
    fn drain_on_close(
        &self,
        batch: &mut Vec<Request<H::Reply>>,
        done: &mut Vec<Completion<H::Reply>>,
    ) {
        while self.requests.take(self.config.max_batch, batch) > 0 {
            done.extend(batch.drain(..).map(|r| Completion {
                id: r.id,
                reply: r.reply,
                outcome: Err(CallError::Closed),
            }));
            self.host.deliver(done);
            done.clear();
        }
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
