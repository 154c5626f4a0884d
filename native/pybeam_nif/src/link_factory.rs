//! Event loops made from Python code (`erlang.new_event_loop()`): each gets its own event
//! process, made by the BEAM on request.
//!
//! The Python thread (never a scheduler) sends `{'$py_new_loop', Token}` to the registered
//! `py_loop_manager` and waits, GIL released, until the event process it starts creates
//! its native loop with that token (`loop_new/2`), which hands the loop over here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustler::sys::{enif_send, enif_whereis_pid, ErlNifPid};
use rustler::{Encoder, OwnedEnv};

use pybeam_core::aio::link::LinkOps;
use pybeam_core::Loop;

use crate::atoms;
use crate::loop_nif::NifHost;

type Outcome = Result<Arc<Loop<NifHost>>, String>;

struct Pending {
    result: Mutex<Option<Outcome>>,
    waiter: Thread,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
static PENDING: Mutex<Option<HashMap<u64, Arc<Pending>>>> = Mutex::new(None);

/// How long a new Python loop waits for the BEAM to make its event process.
const WAIT: Duration = Duration::from_secs(10);

/// Hands the outcome to the waiting thread; false if nobody waits for `token` any more.
pub fn complete(token: u64, outcome: Outcome) -> bool {
    let pending = PENDING.lock().as_mut().and_then(|m| m.remove(&token));
    match pending {
        Some(p) => {
            *p.result.lock() = Some(outcome);
            p.waiter.unpark();
            true
        }
        None => false,
    }
}

/// The factory installed in `pybeam_core::aio::link` when the NIF loads.
pub fn new_link() -> Result<Arc<dyn LinkOps>, String> {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let pending = Arc::new(Pending { result: Mutex::new(None), waiter: std::thread::current() });
    PENDING.lock().get_or_insert_with(HashMap::new).insert(token, pending.clone());
    if !ask_manager(token) {
        complete(token, Err(String::new()));
        return Err("the pybeam application is not running (no py_loop_manager)".into());
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(outcome) = pending.result.lock().take() {
            return outcome.map(|lp| lp as Arc<dyn LinkOps>);
        }
        let now = Instant::now();
        if now >= deadline {
            // Nobody will hand the loop over now; if it comes later it is closed.
            PENDING.lock().as_mut().map(|m| m.remove(&token));
            return Err("timed out waiting for the BEAM to start an event process".into());
        }
        std::thread::park_timeout(deadline - now);
    }
}

fn ask_manager(token: u64) -> bool {
    let env = OwnedEnv::new();
    env.run(|env| {
        let name = atoms::py_loop_manager().encode(env);
        let mut pid = std::mem::MaybeUninit::<ErlNifPid>::uninit();
        // SAFETY: called from a thread the emulator does not manage (a Python thread), where
        // a NULL env is what enif_whereis_pid and enif_send expect; `pid` is an out-pointer.
        unsafe {
            if enif_whereis_pid(std::ptr::null_mut(), name.as_c_arg(), pid.as_mut_ptr()) == 0 {
                return false;
            }
            let msg = (atoms::py_new_loop(), token).encode(env);
            enif_send(std::ptr::null_mut(), pid.as_ptr(), env.as_c_arg(), msg.as_c_arg()) == 1
        }
    })
}
