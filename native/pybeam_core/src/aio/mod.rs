//! The native half of `erlang.ErlangEventLoop`, the asyncio loop that runs on a pybeam loop
//! and gets its timers and fd readiness from the loop's event process.
//!
//! - `handle`: `Handle` and `TimerHandle`, what `call_soon` and `call_later` return.
//! - `core`: `LoopCore`, the scheduling core (`call_soon`, `call_at`, `_run_once`, ...).
//! - `link`: what the core needs from the native loop: waiting, and commands to the
//!   event process.
//! - `helpers`: asyncio's own formatting helpers and the monotonic clock.
//! - `process`: spawning and reaping children for `subprocess_exec`.

pub mod core;
pub mod handle;
pub mod helpers;
pub mod link;
pub mod process;
