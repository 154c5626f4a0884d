//! State that only threads holding the GIL touch, without a lock.

use std::cell::{RefCell, RefMut};

use pyo3::Python;

/// State that only code holding the GIL touches: a `RefCell` whose every borrow needs the
/// `Python` token. For what the loop thread touches per callback (the ready queue), a
/// mutex's two atomic read-modify-writes per access were 7% of a `call_soon` loop.
/// Borrows must not span a call into Python; one that did and was re-entered would panic
/// (a Python exception through pyo3), never alias.
pub struct GilCell<T>(RefCell<T>);

// SAFETY: the inner RefCell is reached only through `borrow_mut`, which takes a `Python`
// token: the caller holds the GIL, and pybeam embeds CPython with a GIL (3.11), so no two
// threads are in the cell at once. A thread that releases the GIL hands it over with a
// release/acquire pair, so the next holder sees the borrow flag as it was left.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    pub fn borrow_mut<'a>(&'a self, _py: Python<'a>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }
}
