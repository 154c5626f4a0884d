//! asyncio's own helpers, looked up once, so that reprs and source tracebacks read exactly
//! as CPython's do.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyTuple};

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GETFRAME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn lookup<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || -> PyResult<Py<PyAny>> { Ok(py.import(module)?.getattr(name)?.unbind()) })
        .map(|f| f.bind(py))
}

/// `format_helpers._format_callback_source(callback, args)`
pub fn format_callback_source(py: Python<'_>, callback: &Bound<'_, PyAny>, args: &Bound<'_, PyTuple>) -> PyResult<String> {
    let f = lookup(py, &FORMAT_CALLBACK_SOURCE, "asyncio.format_helpers", "_format_callback_source")?;
    f.call1((callback, args))?.extract()
}

/// `format_helpers.extract_stack(sys._getframe(0))`: the Python caller's stack (native
/// methods have no frame of their own).
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let frame = lookup(py, &GETFRAME, "sys", "_getframe")?.call1((0,))?;
    Ok(lookup(py, &EXTRACT_STACK, "asyncio.format_helpers", "extract_stack")?.call1((frame,))?.unbind())
}

/// `repr(x)` for a float, as asyncio prints `when=...`.
pub fn float_repr(x: f64) -> String {
    Python::attach(|py| PyFloat::new(py, x).repr().map(|r| r.to_string()).unwrap_or_else(|_| x.to_string()))
}

/// `asyncio.events._set_running_loop(loop)`
pub fn set_running_loop(py: Python<'_>, lp: &Bound<'_, PyAny>) -> PyResult<()> {
    lookup(py, &SET_RUNNING_LOOP, "asyncio.events", "_set_running_loop")?.call1((lp,))?;
    Ok(())
}

/// `asyncio.events._get_running_loop()`
pub fn get_running_loop<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
    lookup(py, &GET_RUNNING_LOOP, "asyncio.events", "_get_running_loop")?.call0()
}

/// The monotonic clock, as `time.monotonic()` reads it (seconds).
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The same clock in microseconds, for deadlines sent to the event process.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// A new instance of one of our native classes, not tracked by the garbage collector.
///
/// pyo3 makes every class a GC type, but ours define no `__traverse__`: they show the
/// collector none of their references, so it could never free a cycle through them. Being
/// tracked only made every collection walk them: handles, timer handles and done callbacks
/// are most of what an asyncio-heavy loop allocates. Untracked, nothing changes but that.
pub fn new_untracked<'py, T: pyo3::PyClass>(
    py: Python<'py>,
    value: impl Into<pyo3::PyClassInitializer<T>>,
) -> PyResult<Bound<'py, T>> {
    let obj = Bound::new(py, value)?;
    // SAFETY: the GIL is held and `obj` is alive; untracking applies only to GC types (the
    // check), and pyo3's dealloc of an untracked object is as of a tracked one (it untracks
    // only if tracked).
    unsafe {
        if pyo3::ffi::PyObject_IS_GC(obj.as_ptr()) != 0 {
            pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
        }
    }
    Ok(obj)
}
