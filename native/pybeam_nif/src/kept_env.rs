//! A process-independent environment that keeps a request's terms alive after its NIF call
//! returns: the caller's reply alias, and large binaries that are read on the loop thread
//! instead of being copied on the scheduler.

use crossbeam_queue::ArrayQueue;
use rustler::sys::{enif_alloc_env, enif_clear_env, enif_free_env, enif_inspect_binary, enif_make_copy};
use rustler::sys::{ErlNifBinary, ErlNifEnv, ErlNifTerm};
use rustler::Term;

use pybeam_core::SharedBytes;
use std::sync::{Arc, OnceLock};

/// Cleared envs ready for reuse. Allocating an env on a scheduler and freeing it on the
/// loop thread cost about 0.8 us per request (the free goes through the emulator's
/// delayed-dealloc path); clearing one and reusing it costs a tenth of that.
struct EnvPtr(*mut ErlNifEnv);
// SAFETY: a cleared process-independent env holds no terms and may move between threads.
unsafe impl Send for EnvPtr {}

const POOL_SIZE: usize = 4096;
static POOL: OnceLock<ArrayQueue<EnvPtr>> = OnceLock::new();

fn pool() -> &'static ArrayQueue<EnvPtr> {
    POOL.get_or_init(|| ArrayQueue::new(POOL_SIZE))
}

pub struct KeptEnv {
    env: *mut ErlNifEnv,
}

// SAFETY: terms are copied into the env only while it is being filled, on the submitting
// thread, before the request is queued; afterwards it is only read (copied out of, inspected),
// and it is freed once, by the last owner, from whichever thread that is.
unsafe impl Send for KeptEnv {}
// SAFETY: see above; shared access is read-only.
unsafe impl Sync for KeptEnv {}

impl KeptEnv {
    pub fn new() -> Self {
        match pool().pop() {
            Some(EnvPtr(env)) => KeptEnv { env },
            // SAFETY: allocating a process-independent env has no preconditions.
            None => KeptEnv { env: unsafe { enif_alloc_env() } },
        }
    }

    /// Copies `term` in; a refc binary is shared (refcount bump), not copied.
    pub fn keep(&self, term: Term<'_>) -> ErlNifTerm {
        // SAFETY: `term` is valid in its own env for this call; `self.env` is ours and is not
        // being read concurrently while the request is being built.
        unsafe { enif_make_copy(self.env, term.as_c_arg()) }
    }

    pub fn raw(&self) -> *mut ErlNifEnv {
        self.env
    }
}

impl Drop for KeptEnv {
    fn drop(&mut self) {
        // SAFETY: we are the env's last user (this is its owner's drop); clearing frees its
        // terms, after which it may be reused from any thread, or freed exactly once.
        unsafe { enif_clear_env(self.env) };
        if let Err(EnvPtr(env)) = pool().push(EnvPtr(self.env)) {
            // SAFETY: the pool is full, so this env is freed here and never reused.
            unsafe { enif_free_env(env) }
        }
    }
}

/// A binary kept in a `KeptEnv`, readable from any thread while the env lives.
pub struct KeptBinary {
    _keep: Arc<KeptEnv>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: binary data is immutable and lives as long as `_keep`.
unsafe impl Send for KeptBinary {}
// SAFETY: as above.
unsafe impl Sync for KeptBinary {}

impl KeptBinary {
    /// Shares `term` (a binary) through `keep`; `None` if it is not a binary.
    pub fn new(keep: &Arc<KeptEnv>, term: Term<'_>) -> Option<KeptBinary> {
        let kept = keep.keep(term);
        let mut bin = std::mem::MaybeUninit::<ErlNifBinary>::uninit();
        // SAFETY: `kept` lives in `keep.env`; inspect fills `bin` on success.
        let ok = unsafe { enif_inspect_binary(keep.raw(), kept, bin.as_mut_ptr()) };
        if ok == 0 {
            return None;
        }
        // SAFETY: initialised by the successful inspect above.
        let bin = unsafe { bin.assume_init() };
        Some(KeptBinary { _keep: keep.clone(), ptr: bin.data, len: bin.size })
    }
}

impl SharedBytes for KeptBinary {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr/len come from enif_inspect_binary on a term kept alive by `_keep`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
