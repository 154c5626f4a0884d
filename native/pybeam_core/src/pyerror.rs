//! Python exceptions as data: `{python, Type, Message, Traceback}` on the Erlang side.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::convert::type_name_of;

#[derive(Clone, Debug, PartialEq)]
pub struct PythonError {
    /// The class's qualified name; builtins are unqualified (`ValueError`, `mymod.MyError`).
    pub type_name: String,
    pub message: String,
    /// The formatted traceback, as `traceback.format_exception` prints it.
    pub traceback: String,
}

static FORMAT_EXCEPTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl PythonError {
    pub fn from_pyerr(py: Python<'_>, err: &PyErr) -> PythonError {
        let value = err.value(py);
        let type_name = type_name_of(&err.get_type(py).into_any());
        let message = value
            .str()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "<unprintable exception>".into());
        let traceback = format_traceback(py, err).unwrap_or_default();
        PythonError { type_name, message, traceback }
    }
}

/// Python 3.11 keeps a fetched traceback beside the exception rather than on
/// `__traceback__`, so it is taken from the error itself.
fn format_traceback(py: Python<'_>, err: &PyErr) -> PyResult<String> {
    let value = err.value(py);
    let format = FORMAT_EXCEPTION.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("traceback")?.getattr("format_exception")?.unbind())
    })?;
    let lines = format.bind(py).call1((value.get_type(), value, err.traceback(py)))?;
    Ok(lines.extract::<Vec<String>>()?.concat())
}
