//! The one embedded CPython interpreter: initialised once per OS process, never finalised.
//!
//! The rules here come from what failed on this machine (see docs/architecture.md):
//! libpython must be in the global symbol scope before any extension module loads; home and
//! executable are the build-time Python's, baked in; Python installs no signal handlers and
//! does not parse argv; the GIL is released right after initialisation; `Py_Finalize` is never
//! called, because a Python call after it crashes the VM.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use parking_lot::Mutex;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyList;

/// The Python this crate was built against.
pub const BUILD_PYTHON_HOME: &str = env!("PYBEAM_PYTHON_HOME");
pub const BUILD_PYTHON_EXECUTABLE: &str = env!("PYBEAM_PYTHON_EXECUTABLE");
pub const BUILD_PYTHON_VERSION: &str = env!("PYBEAM_PYTHON_VERSION");

/// What the host asks of the interpreter. Paths are prepended to `sys.path` in order.
#[derive(Clone, Debug, Default)]
pub struct InterpreterConfig {
    pub python_path: Vec<String>,
    /// A virtualenv root whose site-packages are added with `site.addsitedir`.
    pub venv: Option<String>,
}

static INITIALISED: OnceLock<Result<(), String>> = OnceLock::new();
static CONFIG_LOCK: Mutex<()> = Mutex::new(());

/// Re-opens the already-mapped libpython with `RTLD_GLOBAL`, so that extension modules
/// (`_json`, `_asyncio`, numpy) resolve their `Py*` symbols. The BEAM loads NIFs with local
/// scope, which hides them otherwise.
pub fn promote_libpython_to_global() -> Result<String, String> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let symbol = ffi::Py_IsInitialized as *const libc::c_void;
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(symbol, &mut info) } == 0 || info.dli_fname.is_null() {
        return Err("dladdr found no object for a libpython symbol".into());
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader, valid while it is mapped.
    let path = unsafe { CStr::from_ptr(info.dli_fname) };
    // SAFETY: RTLD_NOLOAD only changes the scope of an object that is already loaded.
    let handle = unsafe {
        libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NOLOAD)
    };
    let name = path.to_string_lossy().into_owned();
    if handle.is_null() {
        return Err(format!("dlopen(RTLD_GLOBAL) failed for {name}"));
    }
    // The handle is deliberately leaked: libpython must stay mapped for the life of the VM.
    Ok(name)
}

/// Initialises the interpreter on first call; later calls only add new `sys.path` entries.
/// Returns with the GIL released.
pub fn initialize(config: &InterpreterConfig) -> Result<(), String> {
    let _serialised = CONFIG_LOCK.lock();
    INITIALISED
        .get_or_init(|| {
            // SAFETY: runs once, before any other Python API use in this process.
            unsafe { init_from_config() }
        })
        .clone()?;
    Python::attach(|py| apply_paths(py, config)).map_err(|e| format!("sys.path setup: {e}"))
}

pub fn is_initialized() -> bool {
    matches!(INITIALISED.get(), Some(Ok(())))
}

unsafe fn init_from_config() -> Result<(), String> {
    if ffi::Py_IsInitialized() != 0 {
        // Someone else (a test harness) already did it; just make sure we can attach.
        return Ok(());
    }
    crate::pymodule::register_in_inittab();

    let home = std::env::var("PYBEAM_PYTHON_HOME").unwrap_or_else(|_| BUILD_PYTHON_HOME.into());
    let home = CString::new(home).map_err(|_| "PYTHONHOME contains NUL".to_string())?;
    let exe = CString::new(BUILD_PYTHON_EXECUTABLE).map_err(|_| "executable contains NUL")?;

    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
    // SAFETY: PyConfig_InitPythonConfig fully initialises the struct it is given.
    ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
    let mut config = config.assume_init();
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    // SAFETY: the config was initialised above; the strings are valid C strings.
    let status = ffi::PyConfig_SetBytesString(&mut config, &mut config.home, home.as_ptr());
    check_status(&mut config, status, "home")?;
    let status = ffi::PyConfig_SetBytesString(&mut config, &mut config.executable, exe.as_ptr());
    check_status(&mut config, status, "executable")?;
    let status = ffi::Py_InitializeFromConfig(&config);
    check_status(&mut config, status, "Py_InitializeFromConfig")?;
    ffi::PyConfig_Clear(&mut config);

    // The thread that initialised Python holds the GIL; give it up for good so that the
    // loop threads can take it. Its thread state is deliberately kept (never finalised).
    let _main_thread_state = ffi::PyEval_SaveThread();
    Ok(())
}

unsafe fn check_status(
    config: &mut ffi::PyConfig,
    status: ffi::PyStatus,
    step: &str,
) -> Result<(), String> {
    if ffi::PyStatus_Exception(status) == 0 {
        return Ok(());
    }
    let msg = if status.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: a failed PyStatus carries a static NUL-terminated message.
        CStr::from_ptr(status.err_msg).to_string_lossy().into_owned()
    };
    ffi::PyConfig_Clear(config);
    Err(format!("{step}: {msg}"))
}

fn apply_paths(py: Python<'_>, config: &InterpreterConfig) -> PyResult<()> {
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?.cast_into::<PyList>()?;
    for (i, dir) in config.python_path.iter().enumerate() {
        if !path.contains(dir)? {
            path.insert(i, dir)?;
        }
    }
    if let Some(venv) = &config.venv {
        let site = py.import("site")?;
        let packages = format!("{venv}/lib/python{BUILD_PYTHON_VERSION}/site-packages");
        site.call_method1("addsitedir", (packages,))?;
    }
    Ok(())
}

/// A Python thread state owned by one OS thread for its whole life, so that thread-local
/// Python state (the running asyncio loop, `threading.local`) survives between GIL holds.
/// While it lives, `Python::attach` on this thread only swaps the GIL in and out.
pub struct ThreadAttachment {
    gil_state: ffi::PyGILState_STATE,
}

impl ThreadAttachment {
    pub fn new() -> Self {
        // SAFETY: the interpreter is initialised (callers start loops only after `initialize`);
        // Ensure creates this thread's state and takes the GIL, SaveThread releases the GIL but
        // keeps the state registered because the GILState counter stays at one.
        unsafe {
            let gil_state = ffi::PyGILState_Ensure();
            ffi::PyEval_SaveThread();
            ThreadAttachment { gil_state }
        }
    }
}

impl Default for ThreadAttachment {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ThreadAttachment {
    fn drop(&mut self) {
        // SAFETY: pairs with `new` on the same thread: re-take the GIL with this thread's
        // state, then let GILState release and delete it.
        unsafe {
            let tstate = ffi::PyGILState_GetThisThreadState();
            ffi::PyEval_RestoreThread(tstate);
            ffi::PyGILState_Release(self.gil_state);
        }
    }
}
