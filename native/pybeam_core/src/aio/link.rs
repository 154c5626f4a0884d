//! What an asyncio loop needs from the native loop it runs on: a way to wait (GIL
//! released) for what its event process delivers, and a way to send it commands.
//!
//! The event process owns fd readiness and timers. The loop tells it what to watch and
//! when to wake it, batched into one message per loop iteration; the event process hands
//! back everything pending in one NIF call, which unparks the loop's thread only if it is
//! parked.

use std::os::fd::RawFd;
use std::sync::Arc;

use pyo3::prelude::*;

/// A readiness direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    Read,
    Write,
}

/// What the event process delivers to a loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivered {
    /// An fd the loop watches is ready in this direction (one-shot: re-armed on request).
    Ready(RawFd, Dir),
    /// A watch could not be set up (the fd was closed or is watched by another loop).
    Failed(RawFd, Dir),
    /// The wake-up the loop asked for is due.
    Wakeup,
    /// The answer to an `erlang.async_call` that this loop made.
    Reply(u64, crate::callbacks::Reply),
}

/// What a loop asks of its event process, sent in batches.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Watch(RawFd, Dir),
    Unwatch(RawFd, Dir),
    /// Re-arm a one-shot watch whose readiness was delivered.
    Rearm(RawFd, Dir),
    /// Wake the loop after this delay; `None` cancels. Relative, because the emulator's
    /// monotonic clock has its own origin: the event process adds its own "now".
    WakeAt(Option<std::time::Duration>),
}

/// The native side of one loop, as seen by its asyncio core.
pub trait LinkOps: Send + Sync + 'static {
    /// Queues a command; commands go out together at the next `flush`.
    fn command(&self, cmd: Command);
    /// Sends the queued commands to the event process, in one message.
    fn flush(&self);
    /// Waits, without the GIL, until something is delivered, requests arrive, `wake` is
    /// called, or `timeout` passes (`None`: no limit). Returns what was delivered.
    fn wait(&self, timeout: Option<std::time::Duration>) -> Vec<Delivered>;
    /// Wakes a waiting `wait` (from any thread).
    fn wake(&self);
    /// Whether sync requests are waiting.
    fn has_requests(&self) -> bool;
    /// Runs up to `max` queued sync requests (loops that have them); returns how many.
    fn serve_requests(&self, py: Python<'_>, max: usize) -> usize;
    /// True once the loop is being destroyed: its asyncio core should stop.
    fn is_closing(&self) -> bool;
    /// The asyncio core was closed: release the native loop (and its event process).
    fn close(&self);
    /// Most callbacks to run per iteration (per GIL hold).
    fn max_batch(&self) -> usize;
    /// Queues deliveries for the loop and wakes it (from any thread).
    fn deliver(&self, events: Vec<Delivered>);
    /// Cancels the tasks of async jobs whose callers gave up; grants stream credit.
    fn run_task_control(&self, py: Python<'_>);
    /// Parks the loop's thread (GIL released) until `done()`, a request, the loop closing,
    /// or `deadline`.
    fn park_until(&self, done: &dyn Fn() -> bool, deadline: Option<std::time::Instant>);
}

/// A link, as a Python object that can be handed to `ErlangEventLoop(_link=...)`.
#[pyclass(module = "_pybeam", name = "Link", frozen)]
pub struct LinkHandle {
    pub ops: Arc<dyn LinkOps>,
}

impl LinkHandle {
    pub fn new(ops: Arc<dyn LinkOps>) -> Self {
        LinkHandle { ops }
    }
}

/// Creates the native loop for an event loop made from Python code (it gets its own event
/// process). Installed by the NIF when it loads; `None` where there is no BEAM (tests).
pub type LinkFactory = dyn Fn() -> Result<Arc<dyn LinkOps>, String> + Send + Sync;

static FACTORY: std::sync::OnceLock<Box<LinkFactory>> = std::sync::OnceLock::new();

pub fn set_link_factory(f: Box<LinkFactory>) {
    let _ = FACTORY.set(f);
}

pub fn new_link() -> Result<Arc<dyn LinkOps>, String> {
    match FACTORY.get() {
        Some(f) => f(),
        None => Err("no BEAM to create an event process for this loop".into()),
    }
}
