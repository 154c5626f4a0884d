//! Native `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `call_at` return.
//!
//! They behave as `asyncio.Handle` and `asyncio.TimerHandle` do (cancel, cancelled,
//! get_context, when, ordering, repr, the `_callback`/`_args`/`_cancelled`/... attributes),
//! but are not subclasses of them: asyncio's are pure Python with `__slots__`, which a
//! native class cannot extend. Running one is a native call: no Python frame of ours.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyDict, PyTuple};

use super::helpers;
use crate::gil_cell::GilCell;

struct Callback {
    callback: Py<PyAny>,
    args: Py<PyTuple>,
}

/// What a live handle holds. A spare handle (see `SpareHandles`) holds none of it.
struct Parts {
    /// Cleared on cancel, as asyncio does, to break reference cycles.
    callback: Option<Callback>,
    context: HandleContext,
    loop_: Py<PyAny>,
}

impl Parts {
    /// What a handle for `callback(*args)` on `loop_` holds, in `context` (a copy of the
    /// current one if None).
    fn new(py: Python<'_>, callback: Py<PyAny>, args: Py<PyTuple>, loop_: Py<PyAny>, context: Option<Py<PyAny>>) -> PyResult<Self> {
        Ok(Parts { callback: Some(Callback { callback, args }), context: HandleContext::for_call(py, context)?, loop_ })
    }
}

/// The context a handle runs its callback in.
///
/// asyncio copies the current context for every callback scheduled without one: a
/// `call_soon` loop allocates a Context per callback, a GC type, and the collector walked
/// every one of them (the largest single cost left in `call_soon`). A copy made here is
/// reachable only through its handle until someone asks the handle for it, and the handle
/// shows the collector none of its references, so the collector could never free a cycle
/// through the copy anyway: it stays untracked while private. `share` (get_context) tracks
/// it again before it escapes. CPython's Context dealloc untracks without checking (3.11),
/// so the copy is tracked again before the handle lets go of it.
struct HandleContext {
    obj: Py<PyAny>,
    private: AtomicBool,
}

impl HandleContext {
    /// `context`, or a copy of the current one if None.
    fn for_call(py: Python<'_>, context: Option<Py<PyAny>>) -> PyResult<Self> {
        match context {
            Some(c) if !c.is_none(py) => Ok(HandleContext { obj: c, private: AtomicBool::new(false) }),
            _ => Self::copy_current(py),
        }
    }

    fn copy_current(py: Python<'_>) -> PyResult<Self> {
        // SAFETY: with the GIL held, CopyCurrent returns a new reference or NULL.
        let obj = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? }.unbind();
        // SAFETY: the GIL is held and `obj` is a live, tracked Context (a GC type), which
        // nothing but this handle references yet.
        unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
        Ok(HandleContext { obj, private: AtomicBool::new(true) })
    }

    /// The context, for code outside the handle: tracked from now on.
    fn share(&self, py: Python<'_>) -> Py<PyAny> {
        self.track();
        self.obj.clone_ref(py)
    }

    fn track(&self) {
        // Only GIL holders get here: a plain load and store, no atomic read-modify-write.
        if self.private.load(Ordering::Relaxed) {
            self.private.store(false, Ordering::Relaxed);
            // SAFETY: called with the GIL held (from Python, or from the handle's dealloc);
            // the object is alive (we hold a reference) and untracked: only this handle
            // untracked it and `private` says it has not been tracked again.
            unsafe { ffi::PyObject_GC_Track(self.obj.as_ptr().cast()) };
        }
    }
}

impl Drop for HandleContext {
    fn drop(&mut self) {
        // A handle lets go of its context when Python frees it (tp_dealloc), when it
        // becomes a spare, or on an error path of `build`, all with the GIL held; `obj`
        // is released right after, by its own Drop.
        self.track();
    }
}

#[pyclass(module = "erlang", name = "Handle", subclass, frozen, weakref)]
pub struct Handle {
    /// None only while the handle is a spare. Behind the GIL, not a lock: every access
    /// holds it anyway. Borrows are never held across Python code.
    parts: GilCell<Option<Parts>>,
    cancelled: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
    /// The repr frozen at cancel time in debug mode (asyncio keeps it for logs).
    repr: GilCell<Option<String>>,
}

impl Handle {
    /// A handle for `callback(*args)` in `context` (a copy of the current one if None).
    pub fn build(
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        loop_: Py<PyAny>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Handle> {
        let parts = Parts::new(py, callback, args, loop_, context)?;
        let source_traceback = if debug { Some(helpers::extract_stack(py)?) } else { None };
        Ok(Handle {
            parts: GilCell::new(Some(parts)),
            cancelled: AtomicBool::new(false),
            source_traceback,
            repr: GilCell::new(None),
        })
    }

    /// The callback and its arguments, unless cancelled. Bound clones: dropping them needs
    /// no check of which thread holds the GIL.
    fn callback_parts<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let parts = self.parts.borrow_mut(py);
        let c = parts.as_ref()?.callback.as_ref()?;
        Some((c.callback.bind(py).clone(), c.args.bind(py).clone()))
    }

    fn loop_obj<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.parts.borrow_mut(py).as_ref().map(|p| p.loop_.bind(py).clone())
    }

    /// The context, for code outside the handle: tracked from now on.
    fn shared_context(&self, py: Python<'_>) -> Py<PyAny> {
        match &*self.parts.borrow_mut(py) {
            Some(p) => p.context.share(py),
            None => py.None(),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Cancels; returns false if it was cancelled already.
    fn mark_cancelled(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let this = slf.get();
        if this.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(false);
        }
        let py = slf.py();
        if let Some(lp) = this.loop_obj(py) {
            if lp.call_method0("get_debug")?.is_truthy()? {
                let repr = Self::describe(slf)?;
                *this.repr.borrow_mut(py) = Some(repr);
            }
        }
        // Dropped outside the borrow: releasing the callback may run Python code.
        let released = this.parts.borrow_mut(py).as_mut().and_then(|p| p.callback.take());
        drop(released);
        Ok(true)
    }

    /// Runs the callback in its context. Exceptions go to the loop's exception handler,
    /// except SystemExit and KeyboardInterrupt, which propagate (as in asyncio).
    pub fn run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (callback, args, ctx) = {
            let parts = this.parts.borrow_mut(py);
            let Some(Parts { callback: Some(c), context, .. }) = parts.as_ref() else {
                return Ok(());
            };
            (c.callback.bind(py).clone(), c.args.bind(py).clone(), context.obj.bind(py).clone())
        };
        let ctx = ctx.as_ptr();
        // SAFETY: ctx is a live Context (we hold a reference; asyncio's rules make it one:
        // either copied here or given by the caller); Enter/Exit pair up below.
        if unsafe { ffi::PyContext_Enter(ctx) } < 0 {
            return Err(PyErr::fetch(py));
        }
        let result = callback.call1(&args);
        // SAFETY: pairs with the successful Enter above.
        if unsafe { ffi::PyContext_Exit(ctx) } < 0 {
            return Err(PyErr::fetch(py));
        }
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py) => Err(e),
            Err(e) => {
                let source = helpers::format_callback_source(py, &callback, &args)?;
                let context = PyDict::new(py);
                context.set_item("message", format!("Exception in callback {source}"))?;
                context.set_item("exception", e.value(py))?;
                context.set_item("handle", slf)?;
                if let Some(tb) = &this.source_traceback {
                    if tb.bind(py).is_truthy()? {
                        context.set_item("source_traceback", tb)?;
                    }
                }
                if let Some(lp) = this.loop_obj(py) {
                    lp.call_method1("call_exception_handler", (context,))?;
                }
                Ok(())
            }
        }
    }

    fn repr_info(slf: &Bound<'_, Self>, class_name: &str) -> PyResult<Vec<String>> {
        let py = slf.py();
        let this = slf.get();
        let mut info = vec![class_name.to_owned()];
        if this.is_cancelled() {
            info.push("cancelled".into());
        }
        if let Some((callback, args)) = this.callback_parts(py) {
            info.push(helpers::format_callback_source(py, &callback, &args)?);
        }
        if let Some(tb) = &this.source_traceback {
            let tb = tb.bind(py);
            if tb.is_truthy()? {
                let frame = tb.get_item(-1)?;
                info.push(format!("created at {}:{}", frame.get_item(0)?, frame.get_item(1)?));
            }
        }
        Ok(info)
    }

    fn describe(slf: &Bound<'_, Self>) -> PyResult<String> {
        let class_name = slf.get_type().name()?.to_string();
        let mut info = Self::repr_info(slf, &class_name)?;
        if let Ok(timer) = slf.cast::<TimerHandle>() {
            let pos = if slf.get().is_cancelled() { 2 } else { 1 };
            info.insert(pos, format!("when={}", helpers::float_repr(timer.get().when)));
        }
        Ok(format!("<{}>", info.join(" ")))
    }
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::mark_cancelled(slf).map(|_| ())
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared_context(py)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run(slf)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        match self.callback_parts(py) {
            Some((callback, _)) => callback.unbind(),
            None => py.None(),
        }
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyAny> {
        match self.callback_parts(py) {
            Some((_, args)) => args.into_any().unbind(),
            None => py.None(),
        }
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        match self.loop_obj(py) {
            Some(lp) => lp.unbind(),
            None => py.None(),
        }
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.shared_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.source_traceback {
            Some(tb) => tb.clone_ref(py),
            None => py.None(),
        }
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> Option<String> {
        self.repr.borrow_mut(py).clone()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let frozen = slf.get().repr.borrow_mut(slf.py()).clone();
        match frozen {
            Some(r) => Ok(r),
            None => Self::describe(slf),
        }
    }
}

/// Spent handles of one loop, kept for its next `call_soon`s.
///
/// Allocating and freeing a handle (pyo3's object set-up and dealloc, the allocator, and
/// the pages of pymalloc arenas that a burst of callbacks empties and the next burst maps
/// again) was about a fifth of the loop thread in a `call_soon` loop. A handle is kept
/// only when nothing else can reach it: it is a plain `Handle`, the loop holds its last
/// reference and it has no weak references. It then lets go of everything it held, just
/// as it would have if freed, so keeping it is not observable. A busy loop keeps up to
/// `MAX_SPARES`; an idle one gives all but `IDLE_SPARES` back.
pub struct SpareHandles(GilCell<Vec<Py<Handle>>>);

const MAX_SPARES: usize = 16_384;
const IDLE_SPARES: usize = 64;

impl SpareHandles {
    pub fn new() -> Self {
        SpareHandles(GilCell::new(Vec::new()))
    }

    /// A handle for `callback(*args)` on `loop_`: a spare one if there is one.
    pub fn handle<'py>(
        &self,
        py: Python<'py>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        loop_: Py<PyAny>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Bound<'py, Handle>> {
        // Debug handles carry a source traceback: never spares, never reused.
        let spare = if debug { None } else { self.0.borrow_mut(py).pop() };
        let Some(spare) = spare else {
            return helpers::new_untracked(py, Handle::build(py, callback, args, loop_, context, debug)?);
        };
        let spare = spare.into_bound(py);
        let parts = Parts::new(py, callback, args, loop_, context)?;
        let this = spare.get();
        this.cancelled.store(false, Ordering::Relaxed);
        // A spare's parts are None: nothing is dropped here.
        *this.parts.borrow_mut(py) = Some(parts);
        Ok(spare)
    }

    /// Keeps `item` (just run or skipped by the loop) as a spare if nothing else can reach
    /// it; otherwise lets it go.
    pub fn keep(&self, item: Bound<'_, PyAny>) {
        let py = item.py();
        let Ok(handle) = item.cast_into_exact::<Handle>() else { return };
        let ptr = handle.as_ptr();
        // SAFETY: the GIL is held and `ptr` is alive (`handle` owns a reference). Handle is
        // a weakref class (the exact type was checked), so its type's `tp_weaklistoffset` is
        // non-zero and locates the object's weak reference list: inside the object, or
        // (negative: CPython 3.12's managed weak references) just before it.
        let unreachable = unsafe {
            let offset = (*ffi::Py_TYPE(ptr)).tp_weaklistoffset;
            ffi::Py_REFCNT(ptr) == 1
                && offset != 0
                && (*ptr.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>()).is_null()
        };
        if !unreachable || self.0.borrow_mut(py).len() >= MAX_SPARES {
            return;
        }
        let this = handle.get();
        if this.source_traceback.is_some() {
            return;
        }
        let held = this.parts.borrow_mut(py).take();
        this.repr.borrow_mut(py).take();
        self.0.borrow_mut(py).push(handle.unbind());
        // Released last, outside every borrow: it may run Python code, even call_soon.
        drop(held);
    }

    pub fn len(&self, py: Python<'_>) -> usize {
        self.0.borrow_mut(py).len()
    }

    /// Lets all but `IDLE_SPARES` go: the loop is about to wait.
    pub fn trim(&self, py: Python<'_>) {
        let extra = {
            let mut spares = self.0.borrow_mut(py);
            if spares.len() <= IDLE_SPARES {
                return;
            }
            spares.split_off(IDLE_SPARES)
        };
        // Spares hold no references: freeing them runs no Python code.
        drop(extra);
    }
}

/// A handle due at a point in time (loop time, seconds).
#[pyclass(module = "erlang", name = "TimerHandle", extends = Handle, frozen)]
pub struct TimerHandle {
    pub when: f64,
    pub scheduled: AtomicBool,
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    #[setter(_scheduled)]
    fn set_scheduled(&self, value: bool) {
        self.scheduled.store(value, Ordering::Relaxed);
    }

    /// Cancelling a scheduled timer tells the loop, which sweeps its heap when many are.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super();
        let was_cancelled = base.get().is_cancelled();
        if !was_cancelled && slf.get().scheduled.load(Ordering::Relaxed) {
            if let Some(lp) = base.get().loop_obj(slf.py()) {
                lp.call_method1("_timer_handle_cancelled", (slf,))?;
            }
        }
        Handle::mark_cancelled(base).map(|_| ())
    }

    fn __hash__(&self) -> u64 {
        self.when.to_bits()
    }

    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || Self::same(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || Self::same(slf, other)?,
            CompareOp::Eq => Self::same(slf, other)?,
            CompareOp::Ne => !Self::same(slf, other)?,
        };
        Ok(pyo3::types::PyBool::new(py, result).to_owned().into_any().unbind())
    }
}

impl TimerHandle {
    /// asyncio's equality: same time, callback, args and cancellation.
    fn same(a: &Bound<'_, Self>, b: &Bound<'_, Self>) -> PyResult<bool> {
        if a.get().when != b.get().when {
            return Ok(false);
        }
        let (ha, hb) = (a.as_super(), b.as_super());
        if ha.get().is_cancelled() != hb.get().is_cancelled() {
            return Ok(false);
        }
        let py = a.py();
        Ok(Handle::_callback(ha.get(), py).bind(py).eq(Handle::_callback(hb.get(), py))?
            && Handle::_args(ha.get(), py).bind(py).eq(Handle::_args(hb.get(), py))?)
    }
}
