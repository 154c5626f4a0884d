//! Value <-> Python object conversion, run on a loop thread with the GIL held.
//! The table is in docs/type-conversion.md; each rule there has a test here or in the suites.

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple,
};

use crate::pymodule::{atom_type, Pid, Ref};
use crate::value::{Bytes, SharedBytes, Value, MAX_DEPTH};

/// Python results at least this large are borrowed, not copied, on their way to the BEAM.
const SHARE_THRESHOLD: usize = 64 * 1024;

/// Why a Python object could not become a `Value`.
#[derive(Debug)]
pub enum ToValueError {
    /// The object's type has no Erlang form; carries its qualified type name.
    Unsupported(String),
    TooDeep,
    Python(PyErr),
}

impl From<PyErr> for ToValueError {
    fn from(e: PyErr) -> Self {
        ToValueError::Python(e)
    }
}

/// Builds the Python object for a value. Depth was bounded when the value was decoded, but it
/// is checked again here because values can also be built by Rust code.
pub fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    to_python_at(py, value, 1)
}

fn to_python_at<'py>(py: Python<'py>, value: &Value, depth: usize) -> PyResult<Bound<'py, PyAny>> {
    if depth > MAX_DEPTH {
        return Err(PyTypeError::new_err(format!("term nests deeper than {MAX_DEPTH}")));
    }
    Ok(match value {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::None => py.None().into_bound(py),
        Value::Binary(b) => binary_to_python(py, b.as_slice()),
        Value::Bytes(b) => PyBytes::new(py, b.as_slice()).into_any(),
        Value::Atom(name) => atom_type(py)?.call1((name.as_str(),))?,
        Value::List(items) => {
            let objs = items
                .iter()
                .map(|v| to_python_at(py, v, depth + 1))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, objs)?.into_any()
        }
        Value::Tuple(items) => {
            let objs = items
                .iter()
                .map(|v| to_python_at(py, v, depth + 1))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, objs)?.into_any()
        }
        Value::Map(pairs) => {
            let dict = PyDict::new(py);
            for (k, v) in pairs {
                dict.set_item(to_python_at(py, k, depth + 1)?, to_python_at(py, v, depth + 1)?)?;
            }
            dict.into_any()
        }
        Value::BigInt { negative, magnitude } => {
            let int = py
                .get_type::<PyInt>()
                .call_method1("from_bytes", (PyBytes::new(py, magnitude), "little"))?;
            if *negative {
                int.neg()?
            } else {
                int
            }
        }
        Value::Pid(etf) => Bound::new(py, Pid { etf: etf.clone() })?.into_any(),
        Value::Ref(etf) => Bound::new(py, Ref { etf: etf.clone() })?.into_any(),
    })
}

/// A UTF-8 binary becomes `str`; anything else stays `bytes`.
fn binary_to_python<'py>(py: Python<'py>, bytes: &[u8]) -> Bound<'py, PyAny> {
    match std::str::from_utf8(bytes) {
        Ok(s) => PyString::new(py, s).into_any(),
        Err(_) => PyBytes::new(py, bytes).into_any(),
    }
}

/// Converts a Python object to a value; `None` becomes `Value::None`.
pub fn from_python(obj: &Bound<'_, PyAny>) -> Result<Value, ToValueError> {
    from_python_at(obj, 1)
}

fn from_python_at(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, ToValueError> {
    if depth > MAX_DEPTH {
        return Err(ToValueError::TooDeep);
    }
    let py = obj.py();
    // Exact types first: they are what real results are made of, and the checks are a
    // pointer compare each.
    if obj.is_exact_instance_of::<PyFloat>() {
        return Ok(Value::Float(obj.cast_exact::<PyFloat>().map_err(PyErr::from)?.value()));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return int_value(obj);
    }
    if obj.is_exact_instance_of::<PyString>() {
        return Ok(Value::Binary(str_bytes(obj.cast_exact::<PyString>().map_err(PyErr::from)?)?));
    }
    if obj.is_none() {
        return Ok(Value::None);
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.is_truthy()?));
    }
    if let Ok(list) = obj.cast_exact::<PyList>() {
        return seq_value(list.iter(), list.len(), depth).map(Value::List);
    }
    if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
        return seq_value(tuple.iter(), tuple.len(), depth).map(Value::Tuple);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            pairs.push((from_python_at(&k, depth + 1)?, from_python_at(&v, depth + 1)?));
        }
        return Ok(Value::Map(pairs));
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(bytes_value(bytes)));
    }
    // Subclasses and the rarer types.
    if obj.is_instance(atom_type(py)?)? {
        return Ok(Value::Atom(obj.extract::<String>()?));
    }
    if let Ok(pid) = obj.cast::<Pid>() {
        return Ok(Value::Pid(pid.get().etf.clone()));
    }
    if let Ok(r) = obj.cast::<Ref>() {
        return Ok(Value::Ref(r.get().etf.clone()));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.is_truthy()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return int_value(obj);
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Binary(str_bytes(s)?));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::Bytes(Bytes::Owned(b.to_vec())));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        return seq_value(list.iter(), list.len(), depth).map(Value::List);
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        return seq_value(tuple.iter(), tuple.len(), depth).map(Value::Tuple);
    }
    if let Ok(set) = obj.cast::<PySet>() {
        return seq_value(set.iter(), set.len(), depth).map(Value::List);
    }
    if let Ok(set) = obj.cast::<PyFrozenSet>() {
        return seq_value(set.iter(), set.len(), depth).map(Value::List);
    }
    Err(ToValueError::Unsupported(qualified_type_name(obj)))
}

fn seq_value<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    len: usize,
    depth: usize,
) -> Result<Vec<Value>, ToValueError> {
    let mut out = Vec::with_capacity(len);
    for item in items {
        out.push(from_python_at(&item, depth + 1)?);
    }
    Ok(out)
}

fn int_value(obj: &Bound<'_, PyAny>) -> Result<Value, ToValueError> {
    let mut overflow: std::os::raw::c_int = 0;
    // SAFETY: obj is a live int (checked by the caller) and we hold the GIL.
    let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    if overflow == 0 {
        if v == -1 {
            if let Some(err) = PyErr::take(obj.py()) {
                return Err(err.into());
            }
        }
        return Ok(Value::Int(v));
    }
    let negative = overflow < 0;
    let magnitude_obj = if negative { obj.neg()? } else { obj.clone() };
    let nbytes = (magnitude_obj.call_method0("bit_length")?.extract::<usize>()? + 7) / 8;
    let magnitude: Vec<u8> = magnitude_obj
        .call_method1("to_bytes", (nbytes, "little"))?
        .extract()?;
    Ok(Value::BigInt { negative, magnitude })
}

/// A Python object kept alive so that its buffer can be read after the GIL is released.
/// The buffer of `bytes` and the cached UTF-8 form of `str` are immutable while it lives.
/// Only buffers of at least SHARE_THRESHOLD bytes are wrapped, so the GIL taken to drop
/// one is paid once per large result.
struct PyBuffer {
    owner: Option<Py<PyAny>>,
    ptr: *const u8,
    len: usize,
}

impl Drop for PyBuffer {
    /// Releases the owner under the GIL. Dropped without it, pyo3 would defer the decref
    /// until some thread next attaches, keeping a large buffer alive for an unknown time.
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            Python::attach(move |_py| drop(owner));
        }
    }
}

// SAFETY: the buffer is immutable and owned by `owner`, which keeps it alive until drop.
unsafe impl Send for PyBuffer {}
// SAFETY: as above; the bytes are only ever read.
unsafe impl Sync for PyBuffer {}

impl SharedBytes for PyBuffer {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len describe the immutable buffer owned by `owner` (see the type docs).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

fn bytes_value(bytes: &Bound<'_, PyBytes>) -> Bytes {
    let slice = bytes.as_bytes();
    if slice.len() < SHARE_THRESHOLD {
        return Bytes::Owned(slice.to_vec());
    }
    Bytes::Shared(Arc::new(PyBuffer {
        ptr: slice.as_ptr(),
        len: slice.len(),
        owner: Some(bytes.clone().into_any().unbind()),
    }))
}

fn str_bytes(s: &Bound<'_, PyString>) -> PyResult<Bytes> {
    let mut len: ffi::Py_ssize_t = 0;
    // SAFETY: `s` is a live str and we hold the GIL; the returned UTF-8 buffer is cached in
    // the object and lives as long as it does.
    let ptr = unsafe { ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len) };
    if ptr.is_null() {
        // Lone surrogates cannot be encoded as UTF-8.
        return Err(PyErr::fetch(s.py()));
    }
    let len = len as usize;
    if len < SHARE_THRESHOLD {
        // SAFETY: ptr/len come from PyUnicode_AsUTF8AndSize just above.
        return Ok(Bytes::Owned(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }.to_vec()));
    }
    Ok(Bytes::Shared(Arc::new(PyBuffer {
        ptr: ptr as *const u8,
        len,
        owner: Some(s.clone().into_any().unbind()),
    })))
}

/// `module.QualName`, or just `QualName` for builtins.
pub fn qualified_type_name(obj: &Bound<'_, PyAny>) -> String {
    type_name_of(&obj.get_type().into_any())
}

pub fn type_name_of(ty: &Bound<'_, PyAny>) -> String {
    let qualname = ty
        .getattr("__qualname__")
        .and_then(|q| q.extract::<String>())
        .unwrap_or_else(|_| "<unknown>".into());
    match ty.getattr("__module__").and_then(|m| m.extract::<String>()) {
        Ok(module) if module != "builtins" => format!("{module}.{qualname}"),
        _ => qualname,
    }
}
