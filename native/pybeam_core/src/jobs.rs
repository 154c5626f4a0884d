//! What a request asks the loop thread to do, and how it is done under the GIL.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::convert::{from_python, to_python, ToValueError};
use crate::gil_cell::GilCell;
use crate::pyerror::PythonError;
use crate::pymodule::CallTimeout;
use crate::tasks::ResultKind;
use crate::value::{Value, MAX_DEPTH};

/// A module, function or keyword name. Short ones (nearly all) are kept inline: a request is
/// decoded on a scheduler thread and freed on the loop thread, and glibc makes such a free
/// take the allocating thread's arena lock (with 1,000-call batches, malloc and free were a
/// fifth of the loop thread's time, most of it `_int_free`).
#[derive(Clone, PartialEq, Eq)]
pub enum Name {
    Inline { len: u8, bytes: [u8; Name::INLINE] },
    Heap(Box<str>),
}

impl Name {
    const INLINE: usize = 30;

    pub fn new(name: &str) -> Name {
        match u8::try_from(name.len()) {
            Ok(len) if name.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..name.len()].copy_from_slice(name.as_bytes());
                Name::Inline { len, bytes }
            }
            _ => Name::Heap(name.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Always valid: the bytes were copied from a str, whole.
            Name::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default(),
            Name::Heap(s) => s,
        }
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Name {
        Name::new(name)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `module.function(*args, **kwargs)`; `function` may be a dotted attribute path.
#[derive(Debug)]
pub struct CallTarget {
    pub module: Name,
    pub function: Name,
    pub args: Vec<Value>,
    pub kwargs: Vec<(Name, Value)>,
}

/// One unit of work for a loop thread.
#[derive(Debug)]
pub enum Job {
    /// A sync call: its value is the result.
    Call(CallTarget),
    /// Evaluate an expression in the loop's globals, with optional extra locals.
    Eval { code: Vec<u8>, locals: Vec<(Name, Value)> },
    /// Execute statements in the loop's globals.
    Exec { code: Vec<u8> },
    /// A call on the loop's asyncio loop: a coroutine function, or a function returning an
    /// awaitable, runs as a task; a plain function's value is the result at once.
    Async(CallTarget),
    /// Async calls run concurrently; one result, the list of theirs in input order.
    Gather(Vec<CallTarget>),
    /// A call returning a generator, an async generator or another (async) iterable,
    /// whose items go out one by one; at most `window` before the event process grants more.
    Stream { target: CallTarget, window: usize },
}

impl Job {
    /// What kind of completion answers this job.
    pub fn result_kind(&self) -> ResultKind {
        match self {
            Job::Call(_) | Job::Eval { .. } | Job::Exec { .. } => ResultKind::Call,
            Job::Async(_) | Job::Gather(_) => ResultKind::Async,
            Job::Stream { .. } => ResultKind::StreamEnd,
        }
    }
}

/// Why a job produced no value.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    Python(PythonError),
    /// The result holds an object with no Erlang form; carries its qualified type name.
    UnsupportedType(String),
    /// The result nests deeper than `MAX_DEPTH`.
    TooDeep(usize),
    /// The caller timed out and the job was interrupted; nobody is waiting for it.
    Interrupted,
    /// The loop was closed before the request ran.
    Closed,
    /// A bug on our side (a Rust panic), reported instead of crashing the VM.
    Internal(String),
    /// The task was cancelled on the Python side.
    Cancelled,
    /// Some items of a gather failed: (1-based index, why) for each.
    GatherFailed(Vec<(usize, CallError)>),
    /// A job that needs the asyncio loop reached a loop without one.
    NoAsyncio,
}

pub type Outcome = Result<Value, CallError>;

/// FNV-1a: names are short, and the standard SipHash (built against hash flooding, which
/// this cache of the caller's own names does not need) was 3% of the loop thread.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Per-loop Python state: the globals that `eval`/`exec` share on this loop, and the
/// Python strings for names already seen (only the loop's thread, holding the GIL, uses
/// them: no lock).
pub struct Executor {
    globals: Py<PyDict>,
    names: GilCell<HashMap<String, Py<PyString>, BuildHasherDefault<Fnv>>>,
}

/// Names cached per loop; past this the cache starts over rather than grow without bound.
const NAME_CACHE_LIMIT: usize = 4096;

impl Executor {
    pub fn new(py: Python<'_>) -> PyResult<Executor> {
        let globals = PyDict::new(py);
        globals.set_item("__builtins__", py.import("builtins")?)?;
        globals.set_item("__name__", "__pybeam__")?;
        Ok(Executor { globals: globals.unbind(), names: GilCell::new(HashMap::default()) })
    }

    /// The interned Python string for a module or attribute name. Creating it per call
    /// (allocation, UTF-8 decoding, hashing on dict lookup) cost more than the lookup here.
    fn name<'py>(&self, py: Python<'py>, name: &str) -> Bound<'py, PyString> {
        if let Some(s) = self.names.borrow_mut(py).get(name) {
            return s.bind(py).clone();
        }
        // Interning may run Python code (a collection): not while the cache is borrowed.
        let s = PyString::intern(py, name);
        let old = {
            let mut names = self.names.borrow_mut(py);
            let old = if names.len() >= NAME_CACHE_LIMIT { std::mem::take(&mut *names) } else { HashMap::default() };
            names.insert(name.to_owned(), s.clone().unbind());
            old
        };
        drop(old);
        s
    }

    pub fn run(&self, py: Python<'_>, job: Job) -> Outcome {
        let result = match job {
            Job::Call(target) => self.call(py, &target),
            Job::Eval { code, locals } => self.eval(py, &code, &locals),
            Job::Exec { code } => self.exec(py, &code).map(|_| py.None().into_bound(py)),
            Job::Async(_) | Job::Gather(_) | Job::Stream { .. } => return Err(CallError::NoAsyncio),
        };
        match result {
            Ok(obj) => value_of(&obj),
            Err(err) => Err(python_error(py, &err)),
        }
    }

    fn eval<'py>(
        &self,
        py: Python<'py>,
        code: &[u8],
        locals: &[(Name, Value)],
    ) -> PyResult<Bound<'py, PyAny>> {
        let compiled = compile(py, code, "eval")?;
        let globals = self.globals.bind(py);
        let locals = if locals.is_empty() { None } else { Some(kwargs_dict(py, locals)?) };
        py.import("builtins")?.getattr("eval")?.call1((compiled, globals, locals))
    }

    fn exec<'py>(&self, py: Python<'py>, code: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let compiled = compile(py, code, "exec")?;
        py.import("builtins")?.getattr("exec")?.call1((compiled, self.globals.bind(py)))
    }
}

/// Compiles source given as bytes, so that Python itself reports bad encodings and NULs.
fn compile<'py>(py: Python<'py>, code: &[u8], mode: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("builtins")?
        .getattr("compile")?
        .call1((PyBytes::new(py, code), "<pybeam>", mode))
}

/// Converts a Python result; a result with no Erlang form is an error, not a crash.
pub fn value_of(obj: &Bound<'_, PyAny>) -> Outcome {
    match from_python(obj) {
        Ok(v) => Ok(v),
        Err(ToValueError::Unsupported(name)) => Err(CallError::UnsupportedType(name)),
        Err(ToValueError::TooDeep) => Err(CallError::TooDeep(MAX_DEPTH)),
        Err(ToValueError::Python(e)) => Err(python_error(obj.py(), &e)),
    }
}

pub fn python_error(py: Python<'_>, err: &PyErr) -> CallError {
    if err.is_instance_of::<CallTimeout>(py) {
        return CallError::Interrupted;
    }
    CallError::Python(PythonError::from_pyerr(py, err))
}

impl Executor {
    /// Finds `module` (already imported ones straight from `sys.modules`) and calls
    /// `function` on it.
    pub fn call<'py>(&self, py: Python<'py>, target: &CallTarget) -> PyResult<Bound<'py, PyAny>> {
        call_with(py, &self.resolve(py, target)?, &target.args, &target.kwargs)
    }

    /// The callable that `target` names.
    pub fn resolve<'py>(&self, py: Python<'py>, target: &CallTarget) -> PyResult<Bound<'py, PyAny>> {
        let mut obj = import(py, &self.name(py, &target.module))?;
        for part in target.function.split('.') {
            obj = obj.getattr(self.name(py, part))?;
        }
        Ok(obj)
    }
}

/// Calls `target(*args, **kwargs)`.
pub fn call_with<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    args: &[Value],
    kwargs: &[(Name, Value)],
) -> PyResult<Bound<'py, PyAny>> {
    let args = PyTuple::new(py, args.iter().map(|v| to_python(py, v)).collect::<PyResult<Vec<_>>>()?)?;
    if kwargs.is_empty() {
        target.call1(args)
    } else {
        target.call(args, Some(&kwargs_dict(py, kwargs)?))
    }
}

pub fn import<'py>(py: Python<'py>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: name is a live str and we hold the GIL; GetModule returns a new reference or
    // NULL (with or without an exception set).
    let cached = unsafe { pyo3::ffi::PyImport_GetModule(name.as_ptr()) };
    if !cached.is_null() {
        // SAFETY: a non-null new reference from PyImport_GetModule.
        return Ok(unsafe { Bound::from_owned_ptr(py, cached) });
    }
    if let Some(err) = PyErr::take(py) {
        return Err(err);
    }
    // SAFETY: as above; PyImport_Import returns a new reference or NULL with an exception.
    let imported = unsafe { pyo3::ffi::PyImport_Import(name.as_ptr()) };
    if imported.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: a non-null new reference.
    Ok(unsafe { Bound::from_owned_ptr(py, imported) })
}

fn kwargs_dict<'py>(py: Python<'py>, pairs: &[(Name, Value)]) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in pairs {
        let k = k.as_str();
        if dict.contains(k)? {
            return Err(PyTypeError::new_err(format!("keyword argument '{k}' given twice")));
        }
        dict.set_item(k, to_python(py, v)?)?;
    }
    Ok(dict)
}

#[cfg(test)]
mod name_tests {
    use super::Name;

    #[test]
    fn short_names_are_inline_and_long_ones_are_not() {
        for s in ["", "math", "os.path", "ünïcode", &"m".repeat(Name::INLINE)] {
            let n = Name::new(s);
            assert!(matches!(n, Name::Inline { .. }), "{s:?}");
            assert_eq!(n.as_str(), s);
        }
        let long = "a_module_name_of_more_than_thirty_bytes";
        let n = Name::new(long);
        assert!(matches!(n, Name::Heap(_)));
        assert_eq!(&*n, long);
        assert_eq!(Name::from("x"), Name::new("x"));
        assert_eq!(format!("{:?}", Name::new("sqrt")), "\"sqrt\"");
    }
}
