//! Large Python results become Erlang binaries without a copy: a resource binary that
//! points into the Python object's own buffer.
//!
//! This also keeps large binaries out of the emulator's allocator on the loop thread: a
//! binary allocated there (an unmanaged thread) and freed on a scheduler is released only
//! when that allocator is next used from the loop thread, which measured as 100 MB of RSS
//! held after a 100 MB result until the loop's next large-ish result.

use std::sync::Arc;

use rustler::{Encoder, Env, Resource, ResourceArc, Term};

use pybeam_core::{reaper, SharedBytes};

pub struct SharedBinary {
    bytes: Option<Arc<dyn SharedBytes>>,
}

#[rustler::resource_impl]
impl Resource for SharedBinary {}

impl Drop for SharedBinary {
    /// Runs where Erlang dropped the last reference (usually a scheduler): the Python
    /// object is released on the reaper thread, which takes the GIL.
    fn drop(&mut self) {
        if let Some(bytes) = self.bytes.take() {
            reaper::retire(Box::new(bytes));
        }
    }
}

pub fn make<'a>(env: Env<'a>, bytes: &Arc<dyn SharedBytes>) -> Term<'a> {
    let resource = ResourceArc::new(SharedBinary { bytes: Some(bytes.clone()) });
    resource
        .make_binary(env, |r| r.bytes.as_deref().map(|b| b.as_slice()).unwrap_or_default())
        .encode(env)
}
