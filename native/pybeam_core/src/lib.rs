//! pybeam's core: everything that runs without the BEAM, so that `cargo test` covers it.
//!
//! - `interpreter`: the one embedded CPython, initialised once and never finalised.
//! - `aio`: the native core of the asyncio loop that runs on each loop.
//! - `child`: child processes that can be reaped although the BEAM ignores SIGCHLD.
//! - `value`: the owned term type that crosses threads.
//! - `convert`: `Value` <-> Python objects.
//! - `jobs`: what a request asks for and how it runs.
//! - `mailbox`: the bounded queue that wakes its consumer on empty -> non-empty.
//! - `loop_thread`: one loop's thread: batches under one GIL hold, delivery through a `Host`.
//! - `interrupt`: raising `CallTimeout` in code whose caller gave up.
//! - `pymodule`: `_pybeam`, the native half of the Python `erlang` package.
//! - `reaper`: releasing Python-owned buffers that Erlang no longer references.
//! - `tasks`: async calls, gathers and streams as asyncio tasks on a loop thread.
//! - `callbacks`: Python calling into Erlang (`erlang.call`, `erlang.send`).

pub mod aio;
pub mod callbacks;
pub mod child;
pub mod convert;
pub mod gil_cell;
pub mod interpreter;
pub mod interrupt;
pub mod jobs;
pub mod loop_thread;
pub mod mailbox;
pub mod pyerror;
pub mod pymodule;
pub mod reaper;
pub mod tasks;
pub mod value;

pub use jobs::{CallError, CallTarget, Job, Name, Outcome};
pub use tasks::ResultKind;
pub use loop_thread::{Completion, Host, Loop, LoopConfig, LoopStats, Request, SubmitError};
pub use value::{Bytes, SharedBytes, Value, MAX_DEPTH};
