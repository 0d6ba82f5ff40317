//! Binding the socket path: replace a leftover socket (one nothing accepts
//! connections on), refuse a live one and anything else, and give the socket file
//! its mode before any peer can connect.
//!
//! Why chmod-before-listen rather than a umask: the umask is process-wide, so
//! narrowing it around `bind` would race with files other threads create. Instead
//! the socket is bound, its file chmod-ed, and only then `listen`ed: until
//! `listen`, `connect` on the path is refused (ECONNREFUSED) whatever the file's
//! mode, so no peer can get in under a wider mode. The socket's directory is
//! trusted (whoever can write to it can replace the socket anyway).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use super::ReaderError;

/// Backlog of not-yet-accepted connections (the kernel caps it at somaxconn).
const BACKLOG: libc::c_int = 4096;

/// Binds a listening Unix stream socket at `path` with permission bits `mode`.
///
/// A leftover socket file at `path` (nothing accepts connections on it) is
/// replaced. A socket another process serves is refused with
/// [`ReaderError::PathServed`]; anything else there (a regular file, a directory,
/// a symlink - even one to a socket) is left untouched and refused with
/// [`ReaderError::PathOccupied`], both naming the path. Callers that may race
/// with another start hold a [`super::PathLock`] around this.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, ReaderError> {
    bind_with(path, mode, true)
}

/// Like [`bind`], but only where nothing is at `path`: any file there, a leftover
/// socket included, is left alone and the bind fails (EADDRINUSE). For serving the
/// path again while running, when whatever is there is not ours to remove.
pub fn bind_if_free(path: &Path, mode: u32) -> Result<UnixListener, ReaderError> {
    bind_with(path, mode, false)
}

fn bind_with(path: &Path, mode: u32, replace_leftover: bool) -> Result<UnixListener, ReaderError> {
    if mode & !0o7777 != 0 {
        return Err(ReaderError::InvalidMode { mode });
    }
    let addr = socket_addr(path)?;
    if replace_leftover {
        clear_leftover(path)?;
    }

    let fd = new_socket(0).map_err(|source| bind_error(path, "socket", source))?;
    // SAFETY: `addr` is a fully initialised sockaddr_un and the length passed is
    // its size; `fd` is an open socket owned by this function.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(bind_error(path, "bind", io::Error::last_os_error()));
    }
    // From here on the file is ours: remove it if anything below fails.
    let finish = || -> Result<(), ReaderError> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|source| bind_error(path, "chmod", source))?;
        // SAFETY: `fd` is an open, bound socket owned by this function.
        if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
            return Err(bind_error(path, "listen", io::Error::last_os_error()));
        }
        Ok(())
    };
    if let Err(err) = finish() {
        let _ = fs::remove_file(path);
        return Err(err);
    }
    Ok(UnixListener::from(fd))
}

/// Removes a leftover socket at `path`; refuses anything else; fine if nothing is there.
fn clear_leftover(path: &Path) -> Result<(), ReaderError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ReaderError::InspectPath {
                path: path.to_owned(),
                source,
            })
        }
    };
    let file_type = meta.file_type();
    if !file_type.is_socket() {
        return Err(ReaderError::PathOccupied {
            path: path.to_owned(),
            kind: describe(file_type),
        });
    }
    if stays_served(path)? {
        return Err(ReaderError::PathServed {
            path: path.to_owned(),
        });
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ReaderError::RemoveLeftover {
            path: path.to_owned(),
            source,
        }),
    }
}

/// How long a socket that still accepts connections is watched before it counts
/// as served. A proxy killed with SIGKILL (its lock already released) leaves an
/// io_uring listener that keeps accepting into its backlog for a moment while the
/// kernel tears the ring down (about 0.2 s seen), though nothing will ever take
/// those connections: a restart at once must not mistake it for a live server.
const SERVED_GRACE: Duration = Duration::from_secs(1);
/// How often the socket is probed again during [`SERVED_GRACE`].
const SERVED_POLL: Duration = Duration::from_millis(25);

/// Whether the socket at `path` is still served after [`SERVED_GRACE`]: a live
/// server answers every probe; a dying listener starts refusing within it.
fn stays_served(path: &Path) -> Result<bool, ReaderError> {
    let deadline = Instant::now() + SERVED_GRACE;
    loop {
        if !is_served(path)? {
            return Ok(false);
        }
        if Instant::now() >= deadline {
            return Ok(true);
        }
        std::thread::sleep(SERVED_POLL);
    }
}

/// Whether something accepts connections on the socket file at `path`: a
/// non-blocking connect that is refused (ECONNREFUSED) means nothing listens (a
/// leftover); one that succeeds, or finds the backlog full (EAGAIN), means another
/// process serves it. Any other answer (e.g. EACCES: not ours to connect to) is
/// refused too, since it cannot be told apart from a live socket.
fn is_served(path: &Path) -> Result<bool, ReaderError> {
    let addr = socket_addr(path)?;
    let fd =
        new_socket(libc::SOCK_NONBLOCK).map_err(|source| bind_error(path, "socket", source))?;
    // SAFETY: `addr` is a fully initialised sockaddr_un and the length passed is
    // its size; `fd` is an open socket owned by this function.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => Ok(false),
        // Removed since we looked: nothing to replace.
        Some(libc::ENOENT) => Ok(false),
        Some(libc::EAGAIN | libc::EINPROGRESS) => Ok(true),
        _ => Err(bind_error(
            path,
            "connect to the socket already there",
            error,
        )),
    }
}

/// What a file is, for messages: `a regular file`, `a symlink`, `a socket`, ...
pub fn describe(file_type: fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symlink"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_file() {
        "a regular file"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a file that is not a socket"
    }
}

/// A new Unix stream socket; `extra_flags` adds e.g. `SOCK_NONBLOCK`.
fn new_socket(extra_flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | extra_flags,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn socket_addr(path: &Path) -> Result<libc::sockaddr_un, ReaderError> {
    let bytes = OsStr::as_bytes(path.as_os_str());
    let invalid = |reason| ReaderError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(invalid("the path is empty"));
    }
    if bytes.contains(&0) {
        return Err(invalid("the path contains a NUL byte"));
    }
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(invalid(
            "the path is too long for a Unix socket (107 bytes at most)",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

fn bind_error(path: &Path, step: &'static str, source: io::Error) -> ReaderError {
    ReaderError::Bind {
        path: path.to_owned(),
        step,
        source,
    }
}
