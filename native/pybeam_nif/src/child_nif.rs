//! Child processes for the event process: spawn, read and write their pipes, signal and
//! collect them. The fds come back as fd watches (see `select`), so the event process
//! watches them like any other fd and each is released by its kind when the watch ends.

use std::ffi::CString;
use std::io;
use std::os::fd::{IntoRawFd, OwnedFd};

use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term};

use pybeam_core::child::{self, ExitStatus, SpawnSpec, Stdio};

use crate::atoms;
use crate::select::{get_watch, new_watch, FdKind, FdWatch};

fn strings(term: Term<'_>) -> Option<Vec<CString>> {
    let mut out = Vec::new();
    for item in crate::decode::proper_list(term)? {
        let bin = Binary::from_iolist(item).ok()?;
        out.push(CString::new(bin.as_slice()).ok()?);
    }
    Some(out)
}

fn opt<'a>(opts: Term<'a>, key: &str) -> Option<Term<'a>> {
    opts.map_get(Atom::from_str(opts.get_env(), key).ok()?).ok()
}

fn stdio(opts: Term<'_>, key: &str, default: Stdio) -> Result<Stdio, &'static str> {
    let Some(v) = opt(opts, key) else { return Ok(default) };
    if atoms::pipe() == v {
        Ok(Stdio::Pipe)
    } else if atoms::null() == v {
        Ok(Stdio::Null)
    } else if atoms::inherit() == v {
        Ok(Stdio::Inherit)
    } else if atoms::stdout() == v && key == "stderr" {
        Ok(Stdio::ToStdout)
    } else {
        Err("stdin, stdout and stderr must be pipe, null or inherit (stderr also stdout)")
    }
}

fn spec(argv: Term<'_>, opts: Term<'_>) -> Result<SpawnSpec, &'static str> {
    let argv = strings(argv).filter(|a| !a.is_empty()).ok_or("argv must be a non-empty list of strings without NUL")?;
    if !opts.is_map() {
        return Err("options must be a map");
    }
    let env = match opt(opts, "env") {
        None => None,
        Some(e) => Some(strings(e).ok_or("env must be a list of \"NAME=value\" strings")?),
    };
    let cwd = match opt(opts, "cwd") {
        None => None,
        Some(c) => Some(
            Binary::from_iolist(c).ok().and_then(|b| CString::new(b.as_slice()).ok()).ok_or("cwd must be a string")?,
        ),
    };
    let new_session = opt(opts, "new_session").map(|t| atoms::true_() == t).unwrap_or(false);
    Ok(SpawnSpec {
        argv,
        env,
        cwd,
        stdin: stdio(opts, "stdin", Stdio::Null)?,
        stdout: stdio(opts, "stdout", Stdio::Pipe)?,
        stderr: stdio(opts, "stderr", Stdio::Pipe)?,
        new_session,
        close_fds: true,
        pass_fds: Vec::new(),
    })
}

fn watch_or_undefined<'a>(env: Env<'a>, fd: Option<OwnedFd>) -> Term<'a> {
    match fd {
        Some(fd) => new_watch(env, fd.into_raw_fd(), FdKind::Owned),
        None => atoms::undefined().encode(env),
    }
}

/// `spawn_child(Argv, Opts) -> {ok, OsPid, Pidfd, Stdin, Stdout, Stderr} | {error, Reason}`.
/// Dirty: the parent waits for the child's exec to succeed or fail.
#[rustler::nif(schedule = "DirtyIo")]
fn spawn_child<'a>(env: Env<'a>, argv: Term<'a>, opts: Term<'a>) -> Term<'a> {
    let spec = match spec(argv, opts) {
        Ok(s) => s,
        Err(why) => return (atoms::badarg(), why).encode(env),
    };
    match child::spawn(&spec) {
        Ok(c) => {
            let pidfd = new_watch(env, c.pidfd.into_raw_fd(), FdKind::Child);
            let stdin = watch_or_undefined(env, c.stdin);
            let stdout = watch_or_undefined(env, c.stdout);
            let stderr = watch_or_undefined(env, c.stderr);
            rustler::types::tuple::make_tuple(
                env,
                &[atoms::ok().encode(env), c.pid.encode(env), pidfd, stdin, stdout, stderr],
            )
        }
        Err(e) => (atoms::error(), errno(env, &e)).encode(env),
    }
}

fn with_watch<'a>(env: Env<'a>, watch: Term<'a>, f: impl FnOnce(&FdWatch) -> Term<'a>) -> Term<'a> {
    match get_watch(watch) {
        Some(w) => f(w),
        None => atoms::badarg().encode(env),
    }
}

/// Borrows the watch's fd as an OwnedFd for a call, without taking ownership.
fn borrowed(w: &FdWatch) -> std::mem::ManuallyDrop<OwnedFd> {
    // SAFETY: the fd stays owned by the watch; ManuallyDrop never closes it.
    std::mem::ManuallyDrop::new(unsafe { std::os::fd::FromRawFd::from_raw_fd(w.fd) })
}

/// `child_wait(Pidfd) -> running | {exited, Code} | {signaled, Signal}`, without blocking.
#[rustler::nif]
fn child_wait<'a>(env: Env<'a>, pidfd: Term<'a>) -> Term<'a> {
    with_watch(env, pidfd, |w| match child::wait(&borrowed(w), true) {
        Ok(None) => atoms::running().encode(env),
        Ok(Some(ExitStatus::Exited(code))) => (atoms::exited(), code).encode(env),
        Ok(Some(ExitStatus::Signaled(sig))) => (atoms::signaled(), sig).encode(env),
        Err(e) => (atoms::error(), errno(env, &e)).encode(env),
    })
}

/// `child_kill(Pidfd, Signal) -> ok | {error, Reason}`: through the pidfd, so a recycled
/// pid can never be hit.
#[rustler::nif]
fn child_kill<'a>(env: Env<'a>, pidfd: Term<'a>, signal: i32) -> Term<'a> {
    with_watch(env, pidfd, |w| match child::send_signal(&borrowed(w), signal) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => (atoms::error(), errno(env, &e)).encode(env),
    })
}

/// `fd_read(Watch, Max) -> {ok, Binary} | eof | eagain | {error, Reason}`; never blocks
/// (our pipes are non-blocking).
#[rustler::nif]
fn fd_read<'a>(env: Env<'a>, watch: Term<'a>, max: usize) -> Term<'a> {
    with_watch(env, watch, |w| {
        let mut buf = vec![0u8; max.clamp(1, 1 << 20)];
        // SAFETY: reading into a buffer of the stated length.
        let n = unsafe { libc::read(w.fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => atoms::eof().encode(env),
            n if n > 0 => {
                let mut bin = NewBinary::new(env, n as usize);
                bin.as_mut_slice().copy_from_slice(&buf[..n as usize]);
                (atoms::ok(), Term::from(bin)).encode(env)
            }
            _ => io_error(env, io::Error::last_os_error()),
        }
    })
}

/// `fd_write(Watch, Data) -> {ok, Written} | eagain | {error, Reason}`; never blocks.
#[rustler::nif]
fn fd_write<'a>(env: Env<'a>, watch: Term<'a>, data: Binary<'a>) -> Term<'a> {
    with_watch(env, watch, |w| {
        // SAFETY: writing from a live binary of the stated length.
        let n = unsafe { libc::write(w.fd, data.as_slice().as_ptr().cast(), data.len()) };
        if n >= 0 {
            (atoms::ok(), n as usize).encode(env)
        } else {
            io_error(env, io::Error::last_os_error())
        }
    })
}

fn io_error<'a>(env: Env<'a>, e: io::Error) -> Term<'a> {
    if e.kind() == io::ErrorKind::WouldBlock {
        atoms::eagain().encode(env)
    } else {
        (atoms::error(), errno(env, &e)).encode(env)
    }
}

/// An errno as the atom Erlang's file and inet modules use for it.
fn errno<'a>(env: Env<'a>, e: &io::Error) -> Term<'a> {
    let name = match e.raw_os_error() {
        Some(libc::ENOENT) => "enoent",
        Some(libc::EACCES) => "eacces",
        Some(libc::EPIPE) => "epipe",
        Some(libc::EBADF) => "ebadf",
        Some(libc::ESRCH) => "esrch",
        Some(libc::ECHILD) => "echild",
        Some(libc::EINVAL) => "einval",
        Some(libc::ENOEXEC) => "enoexec",
        Some(libc::ENOTDIR) => "enotdir",
        Some(libc::EMFILE) => "emfile",
        Some(libc::ENOMEM) => "enomem",
        Some(libc::EAGAIN) => "eagain",
        Some(libc::EIO) => "eio",
        _ => return (atoms::errno(), e.raw_os_error().unwrap_or(0)).encode(env),
    };
    Atom::from_str(env, name).map(|a| a.encode(env)).unwrap_or_else(|_| atoms::error().encode(env))
}
