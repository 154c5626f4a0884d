//! Child processes for `ErlangEventLoop.subprocess_exec`: the spawner of `child`, exposed
//! to Python. The loop watches the returned pidfd for the exit and reads the status from
//! it, because the BEAM ignores SIGCHLD (see `child`).

use std::ffi::CString;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::child::{self, SpawnSpec, Stdio};

/// subprocess's constants.
const PIPE: i64 = -1;
const STDOUT: i64 = -2;
const DEVNULL: i64 = -3;

fn stdio(how: Option<i64>) -> PyResult<Stdio> {
    Ok(match how {
        None => Stdio::Inherit,
        Some(PIPE) => Stdio::Pipe,
        Some(STDOUT) => Stdio::ToStdout,
        Some(DEVNULL) => Stdio::Null,
        Some(fd) if fd >= 0 => Stdio::Fd(fd as RawFd),
        Some(other) => return Err(PyValueError::new_err(format!("invalid stdio value {other}"))),
    })
}

fn os_bytes(py: Python<'_>, s: &Bound<'_, PyAny>) -> PyResult<CString> {
    let b = py.import("os")?.call_method1("fsencode", (s,))?;
    let bytes = b.cast::<PyBytes>()?.as_bytes();
    CString::new(bytes).map_err(|_| PyValueError::new_err("embedded null byte"))
}

fn os_error(e: std::io::Error) -> PyErr {
    PyOSError::new_err((e.raw_os_error().unwrap_or(0), e.to_string()))
}

/// `spawn(argv, cwd, env, stdin, stdout, stderr, new_session, close_fds, pass_fds)`
/// -> `(pid, pidfd, stdin_fd, stdout_fd, stderr_fd)`; the fds are the caller's to close.
#[pyfunction]
#[pyo3(signature = (argv, cwd, env, stdin, stdout, stderr, new_session, close_fds, pass_fds))]
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    py: Python<'_>,
    argv: Vec<Bound<'_, PyAny>>,
    cwd: Option<Bound<'_, PyAny>>,
    env: Option<Bound<'_, PyDict>>,
    stdin: Option<i64>,
    stdout: Option<i64>,
    stderr: Option<i64>,
    new_session: bool,
    close_fds: bool,
    pass_fds: Vec<RawFd>,
) -> PyResult<(i32, RawFd, Option<RawFd>, Option<RawFd>, Option<RawFd>)> {
    let argv = argv.iter().map(|a| os_bytes(py, a)).collect::<PyResult<Vec<_>>>()?;
    if argv.is_empty() {
        return Err(PyValueError::new_err("args must not be empty"));
    }
    let cwd = cwd.map(|c| os_bytes(py, &c)).transpose()?;
    let env = match env {
        None => None,
        Some(e) => {
            let mut pairs = Vec::new();
            for (k, v) in e.iter() {
                let mut kv = os_bytes(py, &k)?.into_bytes();
                kv.push(b'=');
                kv.extend_from_slice(os_bytes(py, &v)?.as_bytes());
                pairs.push(CString::new(kv).map_err(|_| PyValueError::new_err("embedded null byte"))?);
            }
            Some(pairs)
        }
    };
    let spec = SpawnSpec {
        argv,
        env,
        cwd,
        stdin: stdio(stdin)?,
        stdout: stdio(stdout)?,
        stderr: stdio(stderr)?,
        new_session,
        close_fds,
        pass_fds,
    };
    let child = py.detach(|| child::spawn(&spec)).map_err(os_error)?;
    let raw = |f: Option<OwnedFd>| f.map(|f| f.into_raw_fd());
    Ok((child.pid, child.pidfd.into_raw_fd(), raw(child.stdin), raw(child.stdout), raw(child.stderr)))
}

fn with_fd<T>(fd: RawFd, f: impl FnOnce(&OwnedFd) -> T) -> T {
    // SAFETY: the fd stays the caller's; ManuallyDrop never closes it.
    let borrowed = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) });
    f(&borrowed)
}

/// The child's return code if it has exited (minus the signal if killed), else None.
#[pyfunction]
pub fn child_poll(pidfd: RawFd) -> PyResult<Option<i32>> {
    with_fd(pidfd, |fd| child::wait(fd, true)).map(|s| s.map(|s| s.returncode())).map_err(os_error)
}

/// Sends `signal` through the pidfd (ProcessLookupError if the child is gone).
#[pyfunction]
pub fn child_signal(pidfd: RawFd, signal: i32) -> PyResult<()> {
    with_fd(pidfd, |fd| child::send_signal(fd, signal)).map_err(|e| {
        if e.raw_os_error() == Some(libc::ESRCH) {
            pyo3::exceptions::PyProcessLookupError::new_err("the process has exited")
        } else {
            os_error(e)
        }
    })
}
