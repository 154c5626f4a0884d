//! fd readiness through `enif_select`, for the event process.
//!
//! `enif_select` needs a resource type with a `stop` callback, which rustler's `Resource`
//! cannot register, so this type is opened by hand in `load`. The event process arms each
//! fd with a custom message, `{'$py_fd', Fd, read | write, Serial}`, that goes straight to
//! it. An fd is closed only in the stop callback (or the destructor, if it was never
//! selected), and only if we own it: a caller's fd is never closed. A watch monitors the
//! process that arms it, so a select never outlives its event process.

use std::collections::HashSet;
use std::ffi::c_void;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use parking_lot::Mutex;

use rustler::sys::{
    c_int, enif_alloc_resource, enif_get_resource, enif_make_resource, enif_monitor_process, enif_open_resource_type_x,
    enif_release_resource, enif_select, enif_select_x, enif_self, ErlNifEnv, ErlNifMonitor, ErlNifPid, ErlNifResourceFlags, ErlNifResourceType,
    ErlNifResourceTypeInit, ErlNifTerm,
};
use rustler::{Atom, Encoder, Env, Term};

use pybeam_core::child::KillOnDrop;
use pybeam_core::reaper;

use crate::atoms;

const SELECT_READ: c_int = 1;
const SELECT_WRITE: c_int = 2;
const SELECT_STOP: c_int = 4;
const SELECT_CANCEL: c_int = 8;
const SELECT_CUSTOM_MSG: c_int = 16;
/// Return bits of enif_select meaning the fd was refused.
const SELECT_INVALID_EVENT: c_int = 1 << 2;
const SELECT_FAILED: c_int = 1 << 3;

/// Who the fd belongs to, which decides what happens to it when the watch ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FdKind {
    /// The caller's: never closed here.
    Caller,
    /// Ours (a child's pipe): closed.
    Owned,
    /// A child's pidfd: the child is killed and collected, then the fd closed.
    Child,
}

pub struct FdWatch {
    pub fd: RawFd,
    pub kind: FdKind,
    /// enif_select was called: only the stop callback may close the fd now.
    selected: AtomicBool,
    /// The fd was released (closed or handed over); nothing may use it any more.
    released: AtomicBool,
    /// The process that selects it (the event process) is monitored: if it dies without
    /// stopping the watch, `fd_watch_down` does.
    monitored: AtomicBool,
}

static TYPE: AtomicPtr<ErlNifResourceType> = AtomicPtr::new(std::ptr::null_mut());

/// Caller fds under a watch, process-wide. The emulator does not refuse a second resource
/// selecting the same fd (the fd silently changes hands), so two loops watching one fd is
/// refused here instead.
static WATCHED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

fn claim(fd: RawFd) -> bool {
    WATCHED.lock().get_or_insert_with(HashSet::new).insert(fd)
}

fn unclaim(fd: RawFd) {
    if let Some(set) = WATCHED.lock().as_mut() {
        set.remove(&fd);
    }
}

fn resource_type() -> *mut ErlNifResourceType {
    TYPE.load(Ordering::Acquire)
}

impl FdWatch {
    /// Closes (or hands over) the fd once, according to its kind.
    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        match self.kind {
            FdKind::Caller => unclaim(self.fd),
            // SAFETY: an fd we own, released exactly once (guarded by `released`).
            FdKind::Owned => drop(unsafe { OwnedFd::from_raw_fd(self.fd) }),
            FdKind::Child => {
                // SAFETY: as above; killing and collecting may wait, so it happens on the
                // reaper thread, never here (stop callbacks run on emulator threads).
                let pidfd = unsafe { OwnedFd::from_raw_fd(self.fd) };
                reaper::retire(Box::new(KillOnDrop(Some(pidfd))));
            }
        }
    }
}

unsafe extern "C" fn fd_watch_dtor(_env: *mut ErlNifEnv, obj: *mut c_void) {
    let watch = obj as *mut FdWatch;
    // SAFETY: obj is an FdWatch written by `new_watch`; the destructor runs once.
    if !(*watch).selected.load(Ordering::Acquire) {
        (*watch).release();
    }
    std::ptr::drop_in_place(watch);
}

/// The event process that armed the watch died without stopping it (it was killed, or
/// crashed): stop it now, so that its fd is released by kind as on a clean shutdown (a
/// caller's fd can be watched again, a child is killed and collected).
unsafe extern "C" fn fd_watch_down(env: *mut ErlNifEnv, obj: *mut c_void, _pid: *const ErlNifPid, _mon: *const ErlNifMonitor) {
    // SAFETY: the emulator passes the FdWatch the monitor was made with; the resource
    // lives while it is monitored and selected. STOP needs no pid, and its message term
    // is an atom, valid in any env.
    let w = &*(obj as *const FdWatch);
    if w.selected.load(Ordering::Acquire) && !w.released.load(Ordering::Acquire) {
        enif_select(env, w.fd, SELECT_STOP, obj, std::ptr::null(), atoms::undefined().as_c_arg());
    }
}

unsafe extern "C" fn fd_watch_stop(_env: *mut ErlNifEnv, obj: *mut c_void, _fd: c_int, _direct: c_int) {
    // SAFETY: the emulator passes the FdWatch this select was made with, still alive.
    (*(obj as *const FdWatch)).release();
}

/// Opens the resource type; called from the NIF's `load`.
pub fn open_type(env: Env) -> bool {
    // SAFETY: the init struct lives for the call; the callbacks match the C signatures.
    unsafe {
        let mut init: ErlNifResourceTypeInit = std::mem::zeroed();
        init.dtor = fd_watch_dtor as *const _;
        init.stop = fd_watch_stop as *const _;
        init.down = fd_watch_down as *const _;
        let ty = enif_open_resource_type_x(
            env.as_c_arg(),
            c"pybeam_fd_watch".as_ptr(),
            &init,
            ErlNifResourceFlags::ERL_NIF_RT_CREATE,
            std::ptr::null_mut(),
        );
        TYPE.store(ty as *mut _, Ordering::Release);
        !ty.is_null()
    }
}

/// A new watch resource as a term (the term holds the only reference).
pub fn new_watch<'a>(env: Env<'a>, fd: RawFd, kind: FdKind) -> Term<'a> {
    // SAFETY: allocating a resource of our registered type, writing a valid FdWatch into
    // it, handing the reference to a term, then dropping our own.
    unsafe {
        let obj = enif_alloc_resource(resource_type(), std::mem::size_of::<FdWatch>()) as *mut FdWatch;
        std::ptr::write(
            obj,
            FdWatch {
                fd,
                kind,
                selected: AtomicBool::new(false),
                released: AtomicBool::new(false),
                monitored: AtomicBool::new(false),
            },
        );
        let term = enif_make_resource(env.as_c_arg(), obj as *const c_void);
        enif_release_resource(obj as *const c_void);
        Term::new(env, term)
    }
}

/// The watch behind a term, if it is one of ours.
pub fn get_watch<'a>(term: Term<'a>) -> Option<&'a FdWatch> {
    let mut obj: *const c_void = std::ptr::null();
    // SAFETY: enif_get_resource checks the type; the object lives as long as the term.
    unsafe {
        if enif_get_resource(term.get_env().as_c_arg(), term.as_c_arg(), resource_type(), &mut obj) == 0 {
            return None;
        }
        Some(&*(obj as *const FdWatch))
    }
}

/// An fd exists and is open.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// An fd is open and can be polled. Regular files and directories cannot (epoll refuses
/// them, and the emulator would log "Bad input fd in erts_poll()").
pub fn fd_is_pollable(fd: RawFd) -> bool {
    if fd < 0 {
        return false;
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only reads the descriptor table and fills `st`, read only on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so `st` is initialised.
    let kind = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    kind != libc::S_IFREG && kind != libc::S_IFDIR
}

fn direction(dir: Atom) -> Option<c_int> {
    if dir == atoms::read() {
        Some(SELECT_READ)
    } else if dir == atoms::write() {
        Some(SELECT_WRITE)
    } else {
        None
    }
}

/// Any term: whatever is not an fd number is a bad fd, never an exception in the event
/// process that asks.
fn fd_number(term: Term<'_>) -> Option<RawFd> {
    term.decode::<i64>().ok().and_then(|fd| RawFd::try_from(fd).ok())
}

/// `fd_watch(Fd) -> {ok, Watch} | {error, badfd | already_registered}`: a watch on a
/// caller's fd, which no other watch may hold.
#[rustler::nif]
fn fd_watch<'a>(env: Env<'a>, fd: Term<'a>) -> Term<'a> {
    match fd_number(fd) {
        Some(fd) if fd_is_pollable(fd) => {
            if claim(fd) {
                (atoms::ok(), new_watch(env, fd, FdKind::Caller)).encode(env)
            } else {
                (atoms::error(), atoms::already_registered()).encode(env)
            }
        }
        _ => (atoms::error(), atoms::badfd()).encode(env),
    }
}

/// `fd_select(Watch, read | write, Msg) -> ok | {error, badfd}`: one-shot readiness; `Msg`
/// is sent to the calling process when the fd is ready.
#[rustler::nif]
fn fd_select<'a>(env: Env<'a>, watch: Term<'a>, dir: Atom, msg: Term<'a>) -> Term<'a> {
    let (Some(w), Some(mode)) = (get_watch(watch), direction(dir)) else {
        return atoms::badarg().encode(env);
    };
    select_result(env, arm(env, w, mode, msg))
}

/// `fd_select_all([{Watch, read | write, Msg}]) -> [ok | {error, badfd}]`: `fd_select` for
/// each item, in order, in one call: the event process re-arms every fd a loop iteration
/// handled at once.
#[rustler::nif]
fn fd_select_all<'a>(env: Env<'a>, items: Term<'a>) -> Term<'a> {
    const EXPECTED: &str = "expected a proper list of {Watch, read | write, Msg}";
    let Some(list) = crate::decode::proper_list(items) else {
        return (atoms::badarg(), EXPECTED).encode(env);
    };
    // All checked before any is armed: a bad item arms none.
    let mut due = Vec::new();
    for item in list {
        match item.decode::<(Term<'a>, Atom, Term<'a>)>() {
            Ok((watch, dir, msg)) => match (get_watch(watch), direction(dir)) {
                (Some(w), Some(mode)) => due.push((w, mode, msg)),
                _ => return (atoms::badarg(), EXPECTED).encode(env),
            },
            Err(_) => return (atoms::badarg(), EXPECTED).encode(env),
        }
    }
    let results: Vec<Term<'a>> = due.into_iter().map(|(w, mode, msg)| select_result(env, arm(env, w, mode, msg))).collect();
    results.encode(env)
}

fn select_result(env: Env<'_>, armed: bool) -> Term<'_> {
    if armed {
        atoms::ok().encode(env)
    } else {
        (atoms::error(), atoms::badfd()).encode(env)
    }
}

/// Arms `w` for one readiness message to the calling process; false if the fd is gone.
fn arm(env: Env<'_>, w: &FdWatch, mode: c_int, msg: Term<'_>) -> bool {
    if w.released.load(Ordering::Acquire) || !fd_is_open(w.fd) {
        return false;
    }
    let mut pid = std::mem::MaybeUninit::<ErlNifPid>::uninit();
    // SAFETY: called from a NIF, so enif_self fills the caller's pid; the watch object
    // outlives the select (the emulator keeps a reference until stop); msg is a term of
    // this env, copied by enif_select_x.
    let r = unsafe {
        enif_self(env.as_c_arg(), pid.as_mut_ptr());
        enif_select_x(
            env.as_c_arg(),
            w.fd,
            mode | SELECT_CUSTOM_MSG,
            w as *const FdWatch as *mut c_void,
            pid.as_ptr(),
            msg.as_c_arg(),
            std::ptr::null_mut(),
        )
    };
    if r < 0 || r & (SELECT_INVALID_EVENT | SELECT_FAILED) != 0 {
        return false;
    }
    // From now on only the stop callback may release the fd.
    w.selected.store(true, Ordering::Release);
    if !w.monitored.swap(true, Ordering::AcqRel) {
        // SAFETY: the watch is a live resource of our type and `pid` was filled above; no
        // monitor handle is kept (the monitor goes with the resource).
        unsafe {
            enif_monitor_process(env.as_c_arg(), w as *const FdWatch as *const c_void, pid.as_ptr(), std::ptr::null_mut());
        }
    }
    true
}

/// `fd_cancel(Watch, read | write) -> ok`: drops a pending one-shot readiness.
#[rustler::nif]
fn fd_cancel<'a>(env: Env<'a>, watch: Term<'a>, dir: Atom) -> Term<'a> {
    let (Some(w), Some(mode)) = (get_watch(watch), direction(dir)) else {
        return atoms::badarg().encode(env);
    };
    if w.selected.load(Ordering::Acquire) && !w.released.load(Ordering::Acquire) {
        // SAFETY: the fd was selected with this object; cancel needs no pid or ref.
        unsafe {
            enif_select(env.as_c_arg(), w.fd, mode | SELECT_CANCEL, w as *const FdWatch as *mut c_void,
                        std::ptr::null(), atoms::undefined().encode(env).as_c_arg() as ErlNifTerm);
        }
    }
    atoms::ok().encode(env)
}

/// `fd_stop(Watch) -> ok`: ends the watch; the stop callback releases the fd by its kind
/// (a caller's fd stays open).
#[rustler::nif]
fn fd_stop<'a>(env: Env<'a>, watch: Term<'a>) -> Term<'a> {
    let Some(w) = get_watch(watch) else {
        return atoms::badarg().encode(env);
    };
    if w.released.load(Ordering::Acquire) {
        // Already stopped: the fd number may belong to someone else by now.
        return atoms::ok().encode(env);
    }
    if w.selected.load(Ordering::Acquire) {
        // SAFETY: as in fd_cancel; STOP schedules (or runs) the stop callback.
        unsafe {
            enif_select(env.as_c_arg(), w.fd, SELECT_STOP, w as *const FdWatch as *mut c_void,
                        std::ptr::null(), atoms::undefined().encode(env).as_c_arg() as ErlNifTerm);
        }
    } else {
        w.release();
    }
    atoms::ok().encode(env)
}
