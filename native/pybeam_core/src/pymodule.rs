//! `_pybeam`: the native half of the Python `erlang` package. It carries the Erlang types
//! that must round-trip (Pid, Ref, Atom) and the exception used to interrupt a timed-out call.

use pyo3::create_exception;
use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

create_exception!(
    erlang,
    CallTimeout,
    PyBaseException,
    "Raised inside Python code whose Erlang caller timed out. It derives from BaseException so \
     that `except Exception` does not swallow it."
);

/// An Erlang pid. Opaque on the Python side; equal pids compare and hash equal.
#[pyclass(module = "erlang", name = "Pid", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash, Clone)]
pub struct Pid {
    pub etf: Vec<u8>,
}

#[pymethods]
impl Pid {
    fn __repr__(&self) -> String {
        match local_pid_numbers(&self.etf) {
            Some((id, serial)) => format!("<erlang.Pid <{id}.{serial}>>"),
            None => format!("<erlang.Pid {} bytes>", self.etf.len()),
        }
    }
}

/// An Erlang reference. Opaque on the Python side; equal refs compare and hash equal.
#[pyclass(module = "erlang", name = "Ref", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash, Clone)]
pub struct Ref {
    pub etf: Vec<u8>,
}

#[pymethods]
impl Ref {
    fn __repr__(&self) -> String {
        format!("<erlang.Ref {:016x}>", fnv1a(&self.etf))
    }
}

/// Atom is a `str` subclass so that it works wherever a string does; pyo3 cannot subclass
/// `str`, so it is defined in Python when the module initialises.
const ATOM_SOURCE: &std::ffi::CStr = c"
class Atom(str):
    '''An Erlang atom. Converts back to an atom if that atom already exists, else to a binary.'''
    __slots__ = ()
    def __repr__(self):
        return 'Atom(' + str.__repr__(self) + ')'
Atom.__module__ = 'erlang'
";

#[pymodule]
pub fn _pybeam(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Pid>()?;
    m.add_class::<Ref>()?;
    m.add_class::<crate::aio::handle::Handle>()?;
    m.add_class::<crate::aio::handle::TimerHandle>()?;
    m.add_class::<crate::aio::core::LoopCore>()?;
    m.add_class::<crate::aio::core::ReadyView>()?;
    m.add_class::<crate::aio::core::ScheduledView>()?;
    m.add_class::<crate::aio::link::LinkHandle>()?;
    m.add_function(pyo3::wrap_pyfunction!(crate::aio::process::spawn, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(crate::aio::process::child_poll, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(crate::aio::process::child_signal, m)?)?;
    m.add_class::<crate::tasks::TaskDone>()?;
    m.add_class::<crate::tasks::StreamEmit>()?;
    m.add_function(pyo3::wrap_pyfunction!(crate::callbacks::call, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(crate::callbacks::send, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(crate::callbacks::is_registered, m)?)?;
    m.add("CallTimeout", py.get_type::<CallTimeout>())?;
    let scope = PyDict::new(py);
    py.run(ATOM_SOURCE, Some(&scope), None)?;
    m.add("Atom", scope.get_item("Atom")?)?;
    Ok(())
}

/// Must run before the interpreter starts.
pub(crate) fn register_in_inittab() {
    pyo3::append_to_inittab!(_pybeam);
}

static ATOM_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The `erlang.Atom` class, imported once.
pub fn atom_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ATOM_TYPE
        .get_or_try_init(py, || -> PyResult<Py<PyType>> {
            let module = py.import("_pybeam")?;
            Ok(module.getattr("Atom")?.cast_into::<PyType>()?.unbind())
        })
        .map(|t| t.bind(py))
}

/// Pulls `(id, serial)` out of a NEW_PID_EXT / PID_EXT encoding for a readable repr.
fn local_pid_numbers(etf: &[u8]) -> Option<(u32, u32)> {
    let body = etf.strip_prefix(&[131])?;
    let tag = *body.first()?;
    if tag != 88 && tag != 103 {
        return None;
    }
    let after_node = skip_atom(body.get(1..)?)?;
    let id = u32::from_be_bytes(after_node.get(0..4)?.try_into().ok()?);
    let serial = u32::from_be_bytes(after_node.get(4..8)?.try_into().ok()?);
    Some((id, serial))
}

fn skip_atom(b: &[u8]) -> Option<&[u8]> {
    match *b.first()? {
        // ATOM_UTF8_EXT / ATOM_EXT: two-byte length
        118 | 100 => {
            let len = u16::from_be_bytes(b.get(1..3)?.try_into().ok()?) as usize;
            b.get(3 + len..)
        }
        // SMALL_ATOM_UTF8_EXT / SMALL_ATOM_EXT: one-byte length
        119 | 115 => {
            let len = *b.get(1)? as usize;
            b.get(2 + len..)
        }
        _ => None,
    }
}

/// FNV-1a, 64-bit; also the sharding hash on the Erlang side.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_numbers_from_new_pid_ext() {
        // term_to_binary(c:pid(0,123,4)) on a nonode node
        let mut etf = vec![131, 88, 119, 13];
        etf.extend_from_slice(b"nonode@nohost");
        etf.extend_from_slice(&123u32.to_be_bytes());
        etf.extend_from_slice(&4u32.to_be_bytes());
        etf.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(local_pid_numbers(&etf), Some((123, 4)));
        assert_eq!(local_pid_numbers(&[131, 97, 1]), None);
    }

    #[test]
    fn fnv1a_known_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
