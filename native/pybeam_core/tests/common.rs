//! Shared set-up for the integration tests: one interpreter per test binary.
use std::sync::Once;

use pybeam_core::interpreter::{initialize, InterpreterConfig};

static INIT: Once = Once::new();

pub fn python() {
    INIT.call_once(|| {
        // The `erlang` package, so that loop threads run their asyncio loop as in production.
        let priv_python = concat!(env!("CARGO_MANIFEST_DIR"), "/../../priv/python").to_string();
        let config = InterpreterConfig { python_path: vec![priv_python], venv: None };
        initialize(&config).expect("interpreter starts");
    });
}

/// Runs `f` on a thread with a loop thread's stack size (conversions recurse to MAX_DEPTH).
pub fn on_loop_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("test thread panicked")
}

/// Waits (up to 10 s) until `cond` holds: loop threads start their asyncio loop first,
/// which takes a while on a loaded machine.
pub fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
