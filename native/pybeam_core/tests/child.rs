//! Child processes under the BEAM's signal setup: SIGCHLD ignored, so that the kernel
//! auto-reaps ordinary children and their exit status is lost.
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use pybeam_core::child::{send_signal, spawn, wait, ExitStatus, KillOnDrop, SpawnSpec, Stdio};

fn ignore_sigchld_like_the_beam() {
    // SAFETY: setting a signal disposition, as erts does at start-up.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
}

fn spec(argv: &[&str]) -> SpawnSpec {
    SpawnSpec {
        argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
        env: None,
        cwd: None,
        stdin: Stdio::Null,
        stdout: Stdio::Pipe,
        stderr: Stdio::Pipe,
        new_session: false,
        close_fds: true,
        pass_fds: vec![],
    }
}

fn read_all(fd: OwnedFd) -> String {
    // The parent ends are non-blocking: poll until EOF.
    let mut out = Vec::new();
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 4096];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn ordinary_children_lose_their_status_when_sigchld_is_ignored() {
    // The problem this module solves, shown with std's fork/exec.
    ignore_sigchld_like_the_beam();
    let mut child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let status = child.wait();
    assert!(status.is_err(), "expected ECHILD, got {status:?}");
}

#[test]
fn exit_status_is_collected_although_sigchld_is_ignored() {
    ignore_sigchld_like_the_beam();
    let child = spawn(&spec(&["sh", "-c", "exit 3"])).unwrap();
    assert_eq!(wait(&child.pidfd, false).unwrap(), Some(ExitStatus::Exited(3)));
}

#[test]
fn stdout_and_stderr_are_separate_pipes() {
    ignore_sigchld_like_the_beam();
    let child = spawn(&spec(&["sh", "-c", "echo out; echo err >&2"])).unwrap();
    assert_eq!(read_all(child.stdout.unwrap()), "out\n");
    assert_eq!(read_all(child.stderr.unwrap()), "err\n");
    assert_eq!(wait(&child.pidfd, false).unwrap(), Some(ExitStatus::Exited(0)));
}

#[test]
fn stderr_can_follow_stdout() {
    ignore_sigchld_like_the_beam();
    let mut s = spec(&["sh", "-c", "echo out; echo err >&2"]);
    s.stderr = Stdio::ToStdout;
    let child = spawn(&s).unwrap();
    assert!(child.stderr.is_none());
    assert_eq!(read_all(child.stdout.unwrap()), "out\nerr\n");
}

#[test]
fn stdin_pipe_reaches_the_child() {
    ignore_sigchld_like_the_beam();
    let mut s = spec(&["cat"]);
    s.stdin = Stdio::Pipe;
    let child = spawn(&s).unwrap();
    let stdin = child.stdin.unwrap();
    // SAFETY: writing a small buffer to a pipe we own.
    let n = unsafe { libc::write(stdin.as_raw_fd(), b"hello".as_ptr().cast(), 5) };
    assert_eq!(n, 5);
    drop(stdin);
    assert_eq!(read_all(child.stdout.unwrap()), "hello");
}

#[test]
fn signals_go_through_the_pidfd() {
    ignore_sigchld_like_the_beam();
    let child = spawn(&spec(&["sleep", "10"])).unwrap();
    assert_eq!(wait(&child.pidfd, true).unwrap(), None, "still running");
    send_signal(&child.pidfd, libc::SIGTERM).unwrap();
    let status = wait(&child.pidfd, false).unwrap().unwrap();
    assert_eq!(status, ExitStatus::Signaled(libc::SIGTERM));
    assert_eq!(status.returncode(), -15);
}

#[test]
fn the_pidfd_becomes_readable_on_exit() {
    ignore_sigchld_like_the_beam();
    let child = spawn(&spec(&["sh", "-c", "sleep 0.05"])).unwrap();
    let mut pfd = libc::pollfd { fd: child.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: polling one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "not yet");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
    assert_eq!(wait(&child.pidfd, true).unwrap(), Some(ExitStatus::Exited(0)));
}

#[test]
fn without_sigchld_ignored_the_child_is_waited_for_normally() {
    // Where SIGCHLD is not ignored, waitid collects the zombie; this runs in its own
    // process (a fresh test binary) so as not to race the other tests' disposition.
    if std::env::var_os("PYBEAM_CHILD_DEFAULT_SIGCHLD").is_none() {
        // std::process cannot wait for it here (SIGCHLD is ignored): use our spawner.
        ignore_sigchld_like_the_beam();
        let exe = std::env::current_exe().unwrap();
        let mut s = spec(&[exe.to_str().unwrap(), "--exact", "without_sigchld_ignored_the_child_is_waited_for_normally"]);
        let mut env: Vec<CString> = std::env::vars()
            .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap())
            .collect();
        env.push(CString::new("PYBEAM_CHILD_DEFAULT_SIGCHLD=1").unwrap());
        s.env = Some(env);
        s.stdout = Stdio::Null;
        s.stderr = Stdio::Null;
        let child = spawn(&s).unwrap();
        assert_eq!(wait(&child.pidfd, false).unwrap(), Some(ExitStatus::Exited(0)));
        return;
    }
    // SAFETY: restoring the default disposition in this dedicated process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let child = spawn(&spec(&["sh", "-c", "exit 4"])).unwrap();
    assert_eq!(wait(&child.pidfd, false).unwrap(), Some(ExitStatus::Exited(4)));
}

#[test]
fn the_child_gets_default_signal_handling_back() {
    // The BEAM ignores SIGPIPE and SIGCHLD, and the test harness blocks some signals;
    // ignored dispositions and the signal mask survive exec, so the spawner resets them.
    ignore_sigchld_like_the_beam();
    // SAFETY: as in the BEAM.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let child = spawn(&spec(&["grep", "SigIgn", "/proc/self/status"])).unwrap();
    let out = read_all(child.stdout.unwrap());
    assert_eq!(out.trim(), "SigIgn:\t0000000000000000");
    let child = spawn(&spec(&["grep", "SigBlk", "/proc/self/status"])).unwrap();
    assert_eq!(read_all(child.stdout.unwrap()).trim(), "SigBlk:\t0000000000000000");
}

#[test]
fn cwd_and_environment() {
    ignore_sigchld_like_the_beam();
    let mut s = spec(&["sh", "-c", "pwd; echo $PYBEAM_CHILD_TEST"]);
    s.cwd = Some(CString::new("/tmp").unwrap());
    s.env = Some(vec![
        CString::new("PYBEAM_CHILD_TEST=yes").unwrap(),
        CString::new("PATH=/usr/bin:/bin").unwrap(),
    ]);
    let child = spawn(&s).unwrap();
    assert_eq!(read_all(child.stdout.unwrap()), "/tmp\nyes\n");
}

#[test]
fn a_missing_program_is_an_error_not_a_child() {
    ignore_sigchld_like_the_beam();
    let err = spawn(&spec(&["/no/such/program"])).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let err = spawn(&spec(&["no-such-program-on-path"])).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn close_fds_keeps_only_the_standard_streams_and_pass_fds() {
    ignore_sigchld_like_the_beam();
    // An inheritable fd of the parent's, as a leaked BEAM fd would be.
    let mut fds = [0; 2];
    // SAFETY: pipe() into a two-int buffer, without CLOEXEC on purpose.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let list = |close_fds: bool, pass: Vec<i32>| {
        let mut s = spec(&["sh", "-c", "ls /proc/self/fd"]);
        s.close_fds = close_fds;
        s.pass_fds = pass;
        let child = spawn(&s).unwrap();
        let mut fds: Vec<i32> = read_all(child.stdout.unwrap()).split_whitespace().map(|f| f.parse().unwrap()).collect();
        fds.sort();
        fds
    };
    // 0-2 and the fd `ls` opens to read the directory (3).
    assert_eq!(list(true, vec![]), vec![0, 1, 2, 3]);
    assert!(list(true, vec![fds[1]]).contains(&fds[1]));
    assert!(list(false, vec![]).contains(&fds[0]));
    // SAFETY: closing the two fds made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[test]
fn kill_on_drop_leaves_no_zombie() {
    ignore_sigchld_like_the_beam();
    let child = spawn(&spec(&["sleep", "10"])).unwrap();
    let pid = child.pid;
    drop(KillOnDrop(Some(child.pidfd)));
    // SAFETY: kill with signal 0 only checks whether the pid exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1, "the child and its zombie are gone");
}
