//! Child processes whose exit status survives the BEAM's ignored SIGCHLD.
//!
//! Children are started the way `posix_spawn` does it, with `clone(CLONE_VM | CLONE_VFORK)`:
//! the child borrows our address space until it execs, so nothing is copied. A plain fork
//! of the BEAM (plus Python) copied its page tables and measured 4.6 ms per child, six
//! times an Erlang port's spawn; the emulator avoids the same cost with its forker process.
//!
//! With SIGCHLD ignored, the kernel reaps a child the moment it exits, and `waitpid`
//! answers ECHILD: the exit status is lost. (Measured here: this holds even for children
//! created with an exit signal of 0.) So every child is created with a pidfd
//! (`clone3(CLONE_PIDFD)`), which becomes readable when the child exits (the event process
//! watches it like any fd), and its status is read with `waitid(P_PIDFD)` where SIGCHLD is
//! not ignored, or else from the pidfd itself: `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`
//! keeps the status of a reaped child (Linux 6.15 or newer). On older kernels the status
//! of an auto-reaped child is unknowable and is reported as exit code 255, as asyncio's
//! own child watcher does for a child it could not wait for.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What one of the child's standard streams is connected to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stdio {
    /// A new pipe; the parent gets the other end (non-blocking, close-on-exec).
    Pipe,
    /// The parent's own stream.
    Inherit,
    /// /dev/null.
    Null,
    /// Only for stderr: the same as stdout.
    ToStdout,
    /// An fd the caller owns; it stays open in the parent.
    Fd(RawFd),
}

#[derive(Clone, Debug)]
pub struct SpawnSpec {
    /// argv[0] is looked up in PATH when it has no slash.
    pub argv: Vec<CString>,
    /// None keeps the parent's environment.
    pub env: Option<Vec<CString>>,
    pub cwd: Option<CString>,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Put the child in a new session (and process group), as `start_new_session`.
    pub new_session: bool,
    /// Close every fd above 2 in the child (Popen's `close_fds`), except `pass_fds`.
    pub close_fds: bool,
    pub pass_fds: Vec<RawFd>,
}

#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// How a child ended: its exit code, or the signal that killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The asyncio/subprocess convention: the code, or minus the signal number.
    pub fn returncode(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(sig) => -sig,
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid two-int buffer.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned two fresh fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd with plain integer arguments.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Finds `name` in PATH (from `env` if given, else the parent's), like execvp.
fn resolve(name: &CStr, env: Option<&[CString]>) -> io::Result<CString> {
    let bytes = name.to_bytes();
    if bytes.contains(&b'/') {
        return Ok(name.to_owned());
    }
    let path = env
        .and_then(|e| e.iter().find_map(|kv| kv.to_bytes().strip_prefix(b"PATH=").map(<[u8]>::to_vec)))
        .or_else(|| std::env::var_os("PATH").map(|p| std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec()))
        .unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
    for dir in path.split(|b| *b == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut candidate = dir.to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(bytes);
        let Ok(c) = CString::new(candidate) else { continue };
        // SAFETY: c is a valid C string.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(c);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// The child's end of a stream, prepared before the clone.
#[derive(Clone, Copy)]
enum ChildEnd {
    Keep,
    Dup(RawFd),
}

/// Everything the child needs between clone and exec, prepared by the parent. The child
/// shares our memory until it execs and only reads this.
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    ends: [ChildEnd; 3],
    new_session: bool,
    close_fds: bool,
    pass_fds: *const RawFd,
    pass_fds_len: usize,
    err_w: RawFd,
}

/// The child's stack until it execs.
const CHILD_STACK: usize = 64 * 1024;

/// Starts a child. Everything that allocates happens here, before the clone: between the
/// clone and exec the child calls only async-signal-safe functions.
pub fn spawn(spec: &SpawnSpec) -> io::Result<Child> {
    let argv0 = spec.argv.first().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let program = resolve(argv0, spec.env.as_deref())?;
    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env_ptrs: Option<Vec<*const libc::c_char>> = spec.env.as_ref().map(|e| {
        let mut v: Vec<_> = e.iter().map(|kv| kv.as_ptr()).collect();
        v.push(std::ptr::null());
        v
    });
    let envp: *const *const libc::c_char = match &env_ptrs {
        Some(v) => v.as_ptr(),
        // SAFETY: reading the process environment pointer; the child replaces its image
        // right after, so no concurrent setenv can matter to it.
        None => unsafe { environ as *const *const libc::c_char },
    };

    let devnull = match [spec.stdin, spec.stdout, spec.stderr].contains(&Stdio::Null) {
        true => {
            // SAFETY: opening a path with constant flags.
            let fd = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
            // SAFETY: a fresh fd we own.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        false => None,
    };
    let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
    let mut child_pipe_ends: Vec<OwnedFd> = Vec::new();
    let mut ends: [ChildEnd; 3] = [ChildEnd::Keep; 3];
    for (i, how) in [spec.stdin, spec.stdout, spec.stderr].into_iter().enumerate() {
        ends[i] = match how {
            Stdio::Inherit => ChildEnd::Keep,
            Stdio::Null => ChildEnd::Dup(devnull.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1)),
            Stdio::Fd(fd) => ChildEnd::Dup(fd),
            Stdio::ToStdout if i == 2 => ChildEnd::Dup(1),
            Stdio::ToStdout => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            Stdio::Pipe => {
                let (r, w) = pipe()?;
                let (parent, child) = if i == 0 { (w, r) } else { (r, w) };
                set_nonblocking(parent.as_raw_fd())?;
                let raw = child.as_raw_fd();
                child_pipe_ends.push(child);
                parent_ends[i] = Some(parent);
                ChildEnd::Dup(raw)
            }
        };
    }
    // Reports a failed exec: the child writes errno here; a clean exec closes it (CLOEXEC).
    let (err_r, err_w) = pipe()?;
    let args = ChildArgs {
        program: program.as_ptr(),
        argv: argv.as_ptr(),
        envp,
        cwd: spec.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        ends,
        new_session: spec.new_session,
        close_fds: spec.close_fds,
        pass_fds: spec.pass_fds.as_ptr(),
        pass_fds_len: spec.pass_fds.len(),
        err_w: err_w.as_raw_fd(),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: one past the end of the buffer, rounded down to the 16 bytes the ABI wants.
    let stack_top = unsafe { stack.as_mut_ptr().add(CHILD_STACK) } as usize & !15;

    let mut pidfd: libc::c_int = -1;
    // SAFETY: all signals are blocked around the clone, so that none runs a handler of ours
    // in the child, which shares our memory until it execs (the child resets them first).
    // CLONE_VFORK suspends this thread until the child has exec'd or exited, so `args` and
    // `stack` outlive its use of them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_main,
            stack_top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &args as *const ChildArgs as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    drop(stack);
    drop(err_w);
    drop(child_pipe_ends);
    // SAFETY: clone stored a fresh pidfd for the child.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut errno = [0u8; 4];
    // SAFETY: reading up to 4 bytes into a 4-byte buffer.
    let n = unsafe { libc::read(err_r.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
    if n == 4 {
        // exec failed: collect the child, which has already exited.
        let _ = wait(&pidfd, false);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
    let [stdin, stdout, stderr] = parent_ends;
    Ok(Child { pid, pidfd, stdin, stdout, stderr })
}

extern "C" {
    static environ: *const *const libc::c_char;
}

/// The kernel's `struct sigaction` for `rt_sigaction` (x86-64 and aarch64 layout).
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: libc::sighandler_t,
    mask: u64,
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive while the parent is suspended
    // (CLONE_VFORK); exec_child makes only async-signal-safe calls and never returns.
    unsafe { exec_child(&*(arg as *const ChildArgs)) }
}

/// The child between clone and exec: dup the streams into place, put every signal back
/// to its default (handlers of ours must never run here, and ignored dispositions and the
/// signal mask survive exec), then exec. Errors go to the parent through `err_w`.
unsafe fn exec_child(a: &ChildArgs) -> ! {
    let fail = |err_w: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_ne_bytes();
        libc::write(err_w, bytes.as_ptr().cast(), 4);
        libc::_exit(127)
    };
    // Signals first, while they are still blocked: no handler of the parent may run in
    // this shared address space once they are unblocked. glibc's signal() refuses its
    // reserved 32 and 33, hence the raw syscall.
    for sig in 1..=64 {
        let mut old = KernelSigaction::default();
        let got = libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<KernelSigaction>(), &mut old, 8);
        if got == 0 && old.handler != libc::SIG_DFL {
            let dfl = KernelSigaction { handler: libc::SIG_DFL, ..KernelSigaction::default() };
            libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, std::ptr::null_mut::<KernelSigaction>(), 8);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for (target, end) in a.ends.iter().enumerate() {
        if let ChildEnd::Dup(fd) = *end {
            if fd < 0 {
                fail(a.err_w);
            }
            if fd == target as RawFd {
                // Already in place: just make it survive exec.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, target as RawFd) < 0 {
                fail(a.err_w);
            }
        }
    }
    if a.close_fds {
        // Marked close-on-exec rather than closed, so that `err_w` still reports a failed
        // exec; the BEAM's own fds must not leak into the child.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        for i in 0..a.pass_fds_len {
            let fd = *a.pass_fds.add(i);
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
        }
    }
    if !a.cwd.is_null() && libc::chdir(a.cwd) < 0 {
        fail(a.err_w);
    }
    if a.new_session && libc::setsid() < 0 {
        fail(a.err_w);
    }
    libc::execve(a.program, a.argv, a.envp);
    fail(a.err_w)
}

/// The child's exit status; `None` if it has not exited yet and `nohang` is set.
pub fn wait(pidfd: &OwnedFd, nohang: bool) -> io::Result<Option<ExitStatus>> {
    match waitid(pidfd, nohang) {
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
        other => return other,
    }
    // Auto-reaped (SIGCHLD ignored): the pidfd tells whether it exited, and how.
    if !exited(pidfd, if nohang { 0 } else { -1 })? {
        return Ok(None);
    }
    // The pidfd turns readable at exit, a moment before the kernel records the status at
    // reaping: retry briefly.
    for _ in 0..1000 {
        match exit_info(pidfd) {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => std::thread::yield_now(),
            // ENOTTY/EINVAL: a kernel before 6.15 cannot tell.
            Err(_) => return Ok(Some(ExitStatus::Exited(255))),
        }
    }
    Ok(Some(ExitStatus::Exited(255)))
}

fn waitid(pidfd: &OwnedFd, nohang: bool) -> io::Result<Option<ExitStatus>> {
    // SAFETY: zeroed siginfo_t is a valid out-buffer.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: waitid on our pidfd with a valid siginfo buffer.
        let r = unsafe { libc::waitid(libc::P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, flags) };
        if r == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    // SAFETY: siginfo fields filled in by a successful waitid.
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        _ => ExitStatus::Signaled(status),
    }))
}

/// Whether the pidfd is readable (the child exited), waiting up to `timeout_ms` (-1: forever).
fn exited(pidfd: &OwnedFd, timeout_ms: libc::c_int) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: polling one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r >= 0 {
            return Ok(r == 1);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// `struct pidfd_info` (linux/pidfd.h), first version: 64 bytes.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `_IOWR(0xFF, 11, struct pidfd_info)` for the 64-byte version.
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;

/// The exit status the kernel kept for a reaped child; `None` if not (yet) recorded.
fn exit_info(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    let mut info = PidfdInfo { mask: PIDFD_INFO_EXIT, ..PidfdInfo::default() };
    // SAFETY: PIDFD_GET_INFO fills a struct of the size encoded in the request.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info as *mut PidfdInfo) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if info.mask & PIDFD_INFO_EXIT == 0 {
        return Ok(None);
    }
    let raw = info.exit_code;
    Ok(Some(if libc::WIFSIGNALED(raw) {
        ExitStatus::Signaled(libc::WTERMSIG(raw))
    } else {
        ExitStatus::Exited(libc::WEXITSTATUS(raw))
    }))
}

/// Sends `signal` through the pidfd, so it cannot hit a recycled pid.
pub fn send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Kills and collects a child nobody will wait for, so that it does not outlive its loop
/// (or stay a zombie where SIGCHLD is not ignored). Blocks until the child is gone: run it
/// off the schedulers (on the reaper thread).
pub struct KillOnDrop(pub Option<OwnedFd>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pidfd) = self.0.take() {
            if let Ok(None) = wait(&pidfd, true) {
                let _ = send_signal(&pidfd, libc::SIGKILL);
                let _ = wait(&pidfd, false);
            }
        }
    }
}
