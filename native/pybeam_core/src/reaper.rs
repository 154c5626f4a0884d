//! Dropping things whose drop may block, away from the BEAM's schedulers.
//!
//! Large Python results reach Erlang as resource binaries that point into the Python
//! object; when Erlang drops the last reference, the destructor runs on a scheduler, which
//! must never wait for the GIL. Children of a destroyed loop must be killed and collected,
//! which waits for them. Both are handed to this thread. Items that need the GIL take it in
//! their own `Drop` (see `convert::PyBuffer`); the reaper holds it for none of them.

use std::any::Any;
use std::sync::OnceLock;
use std::thread::Thread;

use crossbeam_queue::SegQueue;
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
    // Keeps a Python thread state, so that items taking the GIL in their drop only swap it.
    let _attachment = ThreadAttachment::new();
    loop {
        std::thread::park();
        // The reaper may run before REAPER is set: park again until it is.
        let Some(Some(r)) = REAPER.get() else { continue };
        while let Some(item) = r.queue.pop() {
            drop(item);
        }
    }
}

/// Drops `item` on the reaper thread. Never blocks the caller.
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
