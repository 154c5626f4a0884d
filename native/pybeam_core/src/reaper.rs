//! Releasing Python-owned memory from threads that must not wait for the GIL.
//!
//! Large Python results reach Erlang as resource binaries that point into the Python
//! object. When Erlang drops the last reference, the resource's destructor runs on a
//! scheduler, which must never block on the GIL; it hands the object to this thread,
//! which releases it under the GIL at once.

use std::any::Any;
use std::sync::OnceLock;
use std::thread::Thread;

use crossbeam_queue::SegQueue;
use pyo3::Python;

use crate::interpreter::ThreadAttachment;

type Retired = Box<dyn Any + Send>;

struct Reaper {
    queue: SegQueue<Retired>,
    thread: Thread,
}

static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();

fn reaper() -> Option<&'static Reaper> {
    REAPER
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("pybeam-reaper".into())
                .spawn(reap)
                .map(|handle| Reaper { queue: SegQueue::new(), thread: handle.thread().clone() })
                .ok()
        })
        .as_ref()
}

fn reap() {
    let _attachment = ThreadAttachment::new();
    loop {
        std::thread::park();
        // The reaper may run before REAPER is set: park again until it is.
        let Some(Some(r)) = REAPER.get() else { continue };
        if r.queue.is_empty() {
            continue;
        }
        Python::attach(|_py| {
            while let Some(item) = r.queue.pop() {
                drop(item);
            }
        });
    }
}

/// Drops `item` on the reaper thread, under the GIL. Never blocks the caller.
pub fn retire(item: Retired) {
    match reaper() {
        Some(r) => {
            r.queue.push(item);
            r.thread.unpark();
        }
        // No thread could be started: dropping here is still correct, only slower.
        None => drop(item),
    }
}

/// Items handed over and not yet released (for tests).
pub fn pending() -> usize {
    reaper().map(|r| r.queue.len()).unwrap_or(0)
}
