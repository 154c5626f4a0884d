//! Python calling into Erlang: `erlang.call`, `await erlang.async_call` and `erlang.send`.
//!
//! A call is one message to the `py_callbacks` process, which runs the registered Erlang
//! function in a process of its own and answers through `complete` (a NIF). Each call is
//! named by a token, and its answer goes to exactly the waiter that token names: a parked
//! Python thread, or the asyncio loop whose future awaits it.
//!
//! A loop thread that waits for Erlang keeps serving its loop's sync requests meanwhile, so
//! an Erlang function may call back into the same loop (`py:call`) without deadlock; such
//! calls nest on the loop thread's stack.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::aio::link::{Delivered, LinkOps};
use crate::convert::{from_python, to_python, ToValueError};
use crate::mailbox::{park_until_ready, spin_until_ready};
use crate::pymodule::Pid;
use crate::value::Value;

/// An Erlang function's answer: its value, or the reason it failed.
pub type Reply = Result<Value, Value>;

/// How long a call may take when the caller names no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The dispatcher answers a timed-out call itself; the caller's own deadline is later, in
/// case the dispatcher is gone.
const GRACE: Duration = Duration::from_secs(1);
/// Spin before parking: most answers come back within a few microseconds.
const SPIN: Duration = Duration::from_micros(50);

pub enum SendError {
    NotLocal,
    NotAlive,
    Unavailable(String),
}

/// What the BEAM side provides; installed by the NIF when it loads.
pub trait Beam: Send + Sync {
    /// Asks the dispatcher to run `name(args)`; the answer comes through `complete(token)`.
    fn dispatch(&self, token: u64, name: &str, args: Vec<Value>, timeout_ms: u64) -> Result<(), String>;
    /// `erlang:send(Pid, Msg)` to a local process; `pid` is its external term format.
    fn send(&self, pid: &[u8], msg: &Value) -> Result<(), SendError>;
}

static BEAM: OnceLock<Box<dyn Beam>> = OnceLock::new();

pub fn set_beam(beam: Box<dyn Beam>) {
    let _ = BEAM.set(beam);
}

fn beam() -> PyResult<&'static dyn Beam> {
    BEAM.get()
        .map(|b| b.as_ref())
        .ok_or_else(|| PyRuntimeError::new_err("no BEAM: erlang.call works only inside pybeam"))
}

struct Slot {
    reply: Mutex<Option<Reply>>,
    thread: Thread,
}

enum Waiter {
    Thread(Arc<Slot>),
    Loop(Arc<dyn LinkOps>),
}

static PENDING: LazyLock<Mutex<HashMap<u64, Waiter>>> = LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static REGISTERED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

thread_local! {
    /// The loop whose thread this is, for serving its requests while waiting for Erlang.
    static CURRENT_LINK: RefCell<Option<Arc<dyn LinkOps>>> = const { RefCell::new(None) };
}

pub(crate) fn set_current_link(link: Option<Arc<dyn LinkOps>>) {
    CURRENT_LINK.with(|c| *c.borrow_mut() = link);
}

/// The answer for `token` (from the NIF). False if nobody waits for it any more.
pub fn complete(token: u64, reply: Reply) -> bool {
    let waiter = PENDING.lock().remove(&token);
    match waiter {
        Some(Waiter::Thread(slot)) => {
            *slot.reply.lock() = Some(reply);
            slot.thread.unpark();
            true
        }
        Some(Waiter::Loop(link)) => {
            link.deliver(vec![Delivered::Reply(token, reply)]);
            true
        }
        None => false,
    }
}

/// Answers call `token` with `timeout` if it still waits (the dispatcher's timer fired).
/// True if it did: the worker running it may then be stopped.
pub fn expire(token: u64) -> bool {
    complete(token, Err(timeout_reason()))
}

/// Marks `name` as registered or not, for `from erlang import name`.
pub fn set_registered(name: &str, registered: bool) {
    let mut names = REGISTERED.lock();
    if registered {
        names.insert(name.to_owned());
    } else {
        names.remove(name);
    }
}

fn timeout_of(timeout: Option<f64>) -> PyResult<Duration> {
    match timeout {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Duration::from_secs_f64(t.min(1e9))),
        Some(t) => Err(PyValueError::new_err(format!("timeout must be a non-negative number, got {t}"))),
    }
}

fn values_of(args: &Bound<'_, PyTuple>) -> PyResult<Vec<Value>> {
    args.iter().map(|a| value_or_type_error(&a)).collect()
}

fn value_or_type_error(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    from_python(obj).map_err(|e| match e {
        ToValueError::Unsupported(name) => PyTypeError::new_err(format!("{name} has no Erlang form")),
        ToValueError::TooDeep => PyValueError::new_err("nested too deeply for Erlang"),
        ToValueError::Python(e) => e,
    })
}

static ERRORS: PyOnceLock<(Py<PyType>, Py<PyType>)> = PyOnceLock::new();

/// `erlang.Error` and `erlang.ProcessError`, defined in Python (`erlang._errors`).
fn error_types(py: Python<'_>) -> PyResult<&(Py<PyType>, Py<PyType>)> {
    ERRORS.get_or_try_init(py, || -> PyResult<_> {
        let m = py.import("erlang._errors")?;
        Ok((m.getattr("Error")?.cast_into::<PyType>()?.unbind(), m.getattr("ProcessError")?.cast_into::<PyType>()?.unbind()))
    })
}

/// `erlang.Error(reason)`.
pub(crate) fn erlang_error(py: Python<'_>, reason: &Value) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let reason = to_python(py, reason)?;
        Ok(PyErr::from_value(error_types(py)?.0.bind(py).call1((reason,))?))
    };
    make().unwrap_or_else(|e| e)
}

/// The Python value of an answer, or the `erlang.Error` it raises.
pub(crate) fn reply_to_python(py: Python<'_>, reply: &Reply) -> PyResult<Py<PyAny>> {
    match reply {
        Ok(v) => Ok(to_python(py, v)?.unbind()),
        Err(reason) => Err(erlang_error(py, reason)),
    }
}

fn timeout_reason() -> Value {
    Value::Atom("timeout".into())
}

/// Starts a call whose answer goes to `waiter`; returns its token.
fn dispatch(name: &str, args: Vec<Value>, timeout: Duration, waiter: Waiter) -> PyResult<u64> {
    let beam = beam()?;
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    PENDING.lock().insert(token, waiter);
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if let Err(why) = beam.dispatch(token, name, args, timeout_ms) {
        PENDING.lock().remove(&token);
        return Err(PyRuntimeError::new_err(why));
    }
    Ok(token)
}

/// `erlang.call(name, *args, timeout=None)`: runs the Erlang function registered as `name`
/// and returns its value. The GIL is released while it waits.
#[pyfunction]
#[pyo3(signature = (name, args, timeout = None))]
pub fn call(py: Python<'_>, name: &str, args: &Bound<'_, PyTuple>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
    let timeout = timeout_of(timeout)?;
    let values = values_of(args)?;
    let slot = Arc::new(Slot { reply: Mutex::new(None), thread: std::thread::current() });
    let token = dispatch(name, values, timeout, Waiter::Thread(slot.clone()))?;
    let deadline = Instant::now() + timeout + GRACE;
    let link = CURRENT_LINK.with(|c| c.borrow().clone());
    let answered = || slot.reply.lock().is_some();
    loop {
        if let Some(reply) = slot.reply.lock().take() {
            return reply_to_python(py, &reply);
        }
        if Instant::now() >= deadline {
            PENDING.lock().remove(&token);
            return Err(erlang_error(py, &timeout_reason()));
        }
        match &link {
            // A loop thread serves its requests meanwhile: the Erlang function may call back.
            Some(link) if link.has_requests() => {
                link.serve_requests(py, link.max_batch());
            }
            Some(link) if link.is_closing() => {
                PENDING.lock().remove(&token);
                return Err(PyRuntimeError::new_err("the loop is closing"));
            }
            Some(link) => py.detach(|| link.park_until(&answered, Some(deadline))),
            None => py.detach(|| park_until(&answered, deadline)),
        }
    }
}

/// Threads spinning in `park_until` now. Only one spins at a time: on a machine with few
/// cores, many spinning waiters take the CPU that the answers need.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

fn park_until(done: &dyn Fn() -> bool, deadline: Instant) {
    if SPINNING.fetch_add(1, Ordering::AcqRel) == 0 {
        spin_until_ready(done, SPIN, Some(deadline));
    }
    SPINNING.fetch_sub(1, Ordering::AcqRel);
    park_until_ready(done, Some(deadline));
}

/// Starts a call whose answer is delivered to `link`'s loop as `Delivered::Reply(token)`.
pub(crate) fn call_for_loop(
    link: Arc<dyn LinkOps>,
    name: &str,
    args: &Bound<'_, PyTuple>,
    timeout: Option<f64>,
) -> PyResult<u64> {
    let timeout = timeout_of(timeout)?;
    dispatch(name, values_of(args)?, timeout, Waiter::Loop(link))
}

/// `erlang.send(pid, term)`.
#[pyfunction]
pub fn send(py: Python<'_>, pid: &Bound<'_, Pid>, term: &Bound<'_, PyAny>) -> PyResult<()> {
    let msg = value_or_type_error(term)?;
    let etf = pid.get().etf.clone();
    let beam = beam()?;
    match py.detach(|| beam.send(&etf, &msg)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let why = match e {
                SendError::NotLocal => "not a pid of this node".to_owned(),
                SendError::NotAlive => "no such process".to_owned(),
                SendError::Unavailable(why) => why,
            };
            let process_error = error_types(py)?.1.bind(py);
            Err(PyErr::from_value(process_error.call1((why, pid))?))
        }
    }
}

/// Whether an Erlang function is registered as `name`.
#[pyfunction]
pub fn is_registered(name: &str) -> bool {
    REGISTERED.lock().contains(name)
}

/// The Erlang processes that ran a call and now wait for the next one, most recently idle
/// last. A call goes straight to the most recent one, which looks at its mailbox for a
/// while before it blocks, so that its scheduler is still awake when the call comes.
/// With a dispatcher that started a process per call, the scheduler that ran a call often
/// slept before the next one; on this VM waking it costs 25-30 us, and erlang.call ran at
/// 30,000-40,000 calls/s in a third of runs instead of 150,000-200,000.
pub struct IdleWorkers<P> {
    stack: Mutex<Vec<P>>,
    /// Counts pushes: a waiting worker is the next to get a call while no push followed its
    /// own.
    pushes: AtomicU64,
}

impl<P: PartialEq> IdleWorkers<P> {
    pub const fn new() -> Self {
        IdleWorkers { stack: Mutex::new(Vec::new()), pushes: AtomicU64::new(0) }
    }

    /// `worker` waits for a call. Returns its ticket for `is_next`.
    pub fn push(&self, worker: P) -> u64 {
        let mut stack = self.stack.lock();
        stack.push(worker);
        self.pushes.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether the worker that got `ticket` is still the one the next call goes to (unless a
    /// sender took it already, in which case its call is in its mailbox).
    pub fn is_next(&self, ticket: u64) -> bool {
        self.pushes.load(Ordering::Acquire) == ticket
    }

    /// The worker to send the next call to, taken off the list.
    pub fn pop(&self) -> Option<P> {
        self.stack.lock().pop()
    }

    /// `worker` wants to stop waiting. True if it was still on the list (no call can come
    /// to it now); false if a sender already took it, whose call is then on its way.
    pub fn retire(&self, worker: &P) -> bool {
        let mut stack = self.stack.lock();
        match stack.iter().rposition(|w| w == worker) {
            Some(i) => {
                stack.remove(i);
                true
            }
            None => false,
        }
    }
}

impl<P: PartialEq> Default for IdleWorkers<P> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::IdleWorkers;

    #[test]
    fn the_most_recently_idle_worker_gets_the_next_call() {
        let idle = IdleWorkers::new();
        let first = idle.push(1);
        assert!(idle.is_next(first));
        let second = idle.push(2);
        assert!(!idle.is_next(first), "a later worker is ahead of it");
        assert!(idle.is_next(second));
        assert_eq!(idle.pop(), Some(2));
        assert_eq!(idle.pop(), Some(1));
        assert_eq!(idle.pop(), None);
    }

    #[test]
    fn a_worker_retires_only_if_no_sender_took_it() {
        let idle = IdleWorkers::new();
        idle.push(1);
        idle.push(2);
        idle.push(3);
        assert!(idle.retire(&2));
        assert!(!idle.retire(&2), "already gone");
        assert_eq!(idle.pop(), Some(3));
        assert!(!idle.retire(&3), "taken by a sender: its call is on the way");
        assert_eq!(idle.pop(), Some(1));
        assert_eq!(idle.pop(), None);
    }
}
