//! Interrupting the Python code of a caller that timed out.
//!
//! `PyThreadState_SetAsyncExc` needs the GIL, which the loop thread holds while the runaway
//! code runs, and a BEAM scheduler must never block on it. So a single helper thread takes
//! the GIL (Python hands it over at the next switch interval) and raises `CallTimeout` in the
//! loop thread, but only if that thread is still running the timed-out request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::{ffi, PyTypeInfo};

use crate::interpreter::ThreadAttachment;
use crate::pymodule::CallTimeout;

/// What a loop thread publishes about the request it is running.
#[derive(Default)]
pub struct RunState {
    /// Callback id of the request being executed; 0 between requests. Written by the loop
    /// thread while it holds the GIL.
    pub running: AtomicU64,
    /// `threading.get_ident()` of the loop thread.
    pub thread_ident: AtomicU64,
    /// Id whose interruption was raised and may still be pending in the thread state.
    pub interrupted: AtomicU64,
}

impl RunState {
    /// Called by the loop thread, with the GIL, after a request finished: an async exception
    /// aimed at it that did not fire must not hit the next request.
    pub fn clear_stale_interrupt(&self, _py: Python<'_>, id: u64) {
        if self.interrupted.load(Ordering::SeqCst) == id {
            // SAFETY: the GIL is held (the `Python` token) and NULL clears a pending async exc.
            unsafe {
                ffi::PyThreadState_SetAsyncExc(
                    self.thread_ident.load(Ordering::SeqCst) as _,
                    std::ptr::null_mut(),
                );
            }
            self.interrupted.store(0, Ordering::SeqCst);
        }
    }
}

static INTERRUPTER: OnceLock<Mutex<Sender<(Arc<RunState>, u64)>>> = OnceLock::new();

/// Asks the helper thread to interrupt `id` on the loop that `state` describes.
pub fn interrupt(state: Arc<RunState>, id: u64) {
    let sender = INTERRUPTER.get_or_init(|| {
        let (tx, rx) = channel::<(Arc<RunState>, u64)>();
        let spawned = std::thread::Builder::new()
            .name("pybeam-interrupt".into())
            .spawn(move || {
                let _attachment = ThreadAttachment::new();
                while let Ok((state, id)) = rx.recv() {
                    Python::attach(|py| raise_in_loop_thread(py, &state, id));
                }
            });
        if let Err(e) = spawned {
            eprintln!("pybeam: could not start the interrupt thread: {e}");
        }
        Mutex::new(tx)
    });
    let _ = sender.lock().send((state, id));
}

fn raise_in_loop_thread(py: Python<'_>, state: &RunState, id: u64) {
    // The loop thread changes `running` only with the GIL, which we now hold: if it still
    // names `id`, the loop thread is suspended inside that request's Python code.
    if state.running.load(Ordering::SeqCst) != id {
        return;
    }
    state.interrupted.store(id, Ordering::SeqCst);
    let exc = CallTimeout::type_object(py);
    // SAFETY: GIL held; the ident names a live thread state (the loop thread is mid-request).
    unsafe {
        ffi::PyThreadState_SetAsyncExc(state.thread_ident.load(Ordering::SeqCst) as _, exc.as_ptr());
    }
}
