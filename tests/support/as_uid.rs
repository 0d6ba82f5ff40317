//! Clients running as another uid: a forked child switches uid, connects to a Unix
//! socket and talks over it with raw syscalls. Only root may switch uid, so a test
//! using it first calls [`skip_without_root`], which skips it elsewhere with a
//! printed reason. Shared by the pipeline support and the reader tests' `reader_common`.

use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// The uid the peer-credential tests connect as.
pub const NOBODY: u32 = 65534;

/// Says on the test process's stderr that `test` is skipped and why. Written to the
/// stderr stream itself, which the test harness does not capture, so the reason
/// shows in `cargo test`'s output although the test passes.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// True (after saying so) when this process cannot switch uid because it is not
/// root; a test that connects as another uid then returns at once.
pub fn skip_without_root(test: &str) -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return false;
    }
    skip(
        test,
        &format!("connecting as uid {NOBODY} needs root; running as uid {euid}"),
    );
    true
}

/// Forks a child that switches to `uid` (and the group of the same number),
/// connects to `path`, and exits with `talk(fd)`; returns the child's exit
/// status. Statuses 10-13 are the set-up steps failing (setgid, setuid, socket,
/// connect). `talk` runs in the child of a multi-threaded process: it may only
/// make async-signal-safe calls on memory prepared before the fork.
pub fn connect_as_uid(uid: u32, path: &Path, talk: impl Fn(libc::c_int) -> libc::c_int) -> i32 {
    assert_eq!(
        // SAFETY: geteuid takes no arguments and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "switching to uid {uid} needs root: call skip_without_root first"
    );
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fork in a threaded process: the child only makes raw syscalls on
    // memory prepared above and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw syscalls on live locals of this (single-threaded) child,
        // which never returns.
        unsafe {
            if libc::syscall(libc::SYS_setgid, uid) != 0 {
                libc::_exit(10);
            }
            if libc::syscall(libc::SYS_setuid, uid) != 0 {
                libc::_exit(11);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(12);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(13);
            }
            libc::_exit(talk(fd));
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is a live local.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Lets every uid reach a socket inside `dir` (a temp dir is 0700).
pub fn open_dir_to_everyone(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}
