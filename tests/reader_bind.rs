//! Binding the socket path: what is replaced, what is refused, and the file's mode.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use boundary_log_proxy::reader::{bind, ReaderError, DEFAULT_SOCKET_MODE};

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn assert_refused_naming(err: ReaderError, path: &Path, kind: &str) {
    let message = err.to_string();
    assert!(
        matches!(err, ReaderError::PathOccupied { .. }),
        "unexpected error: {message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(kind), "{message}");
}

#[test]
fn leftover_socket_file_is_replaced_by_a_listening_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(UnixStream::connect(&path).is_err(), "the leftover is dead");
    let listener = bind(&path, DEFAULT_SOCKET_MODE).unwrap();
    let _client = UnixStream::connect(&path).unwrap();
    assert!(listener.accept().is_ok());
}

#[test]
fn regular_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    fs::write(&path, b"precious data").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let err = bind(&path, DEFAULT_SOCKET_MODE).unwrap_err();
    assert_refused_naming(err, &path, "regular file");
    assert_eq!(fs::read(&path).unwrap(), b"precious data");
    assert_eq!(mode_of(&path), 0o640);
}

#[test]
fn directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), b"x").unwrap();
    let err = bind(&path, DEFAULT_SOCKET_MODE).unwrap_err();
    assert_refused_naming(err, &path, "directory");
    assert_eq!(fs::read(path.join("inside")).unwrap(), b"x");
}

#[test]
fn symlink_to_a_file_is_refused_and_neither_link_nor_target_touched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    fs::write(&target, b"target data").unwrap();
    let path = dir.path().join("s.sock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = bind(&path, DEFAULT_SOCKET_MODE).unwrap_err();
    assert_refused_naming(err, &path, "symlink");
    assert!(fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&path).unwrap(), target);
    assert_eq!(fs::read(&target).unwrap(), b"target data");
}

#[test]
fn symlink_to_a_socket_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.sock");
    let _real = UnixListener::bind(&target).unwrap();
    let path = dir.path().join("s.sock");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    let err = bind(&path, DEFAULT_SOCKET_MODE).unwrap_err();
    assert_refused_naming(err, &path, "symlink");
    assert!(fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(&target)
        .unwrap()
        .file_type()
        .is_socket());
}

#[test]
fn socket_file_gets_mode_0600_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let _listener = bind(&path, DEFAULT_SOCKET_MODE).unwrap();
    assert_eq!(DEFAULT_SOCKET_MODE, 0o600);
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn socket_file_gets_a_custom_mode_even_wider_than_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o660, 0o666, 0o700] {
        let path = dir.path().join(format!("s{mode:o}.sock"));
        let _listener = bind(&path, mode).unwrap();
        assert_eq!(mode_of(&path), mode);
    }
}

#[test]
fn mode_beyond_permission_bits_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let err = bind(&path, 0o10600).unwrap_err();
    assert!(matches!(err, ReaderError::InvalidMode { mode: 0o10600 }));
    assert!(!path.exists());
}

#[test]
fn path_too_long_for_a_unix_socket_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x".repeat(120));
    let err = bind(&path, DEFAULT_SOCKET_MODE).unwrap_err();
    assert!(matches!(err, ReaderError::InvalidPath { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn missing_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("s.sock");
    let err = bind(&path, DEFAULT_SOCKET_MODE).unwrap_err();
    assert!(
        matches!(err, ReaderError::Bind { step: "bind", .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn a_socket_another_process_serves_is_refused_naming_the_path_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let live = UnixListener::bind(&path).unwrap();
    let err = bind(&path, DEFAULT_SOCKET_MODE).expect_err("a live socket is not replaced");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("another process serves it"), "{message}");
    let _client = UnixStream::connect(&path).expect("the live socket still answers");
    assert!(live.accept().is_ok());
}

#[test]
fn a_socket_whose_backlog_is_full_counts_as_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let live = UnixListener::bind(&path).unwrap();
    // SAFETY: listen(2) again on our listening socket only shrinks its backlog.
    assert_eq!(unsafe { libc::listen(live.as_raw_fd(), 0) }, 0);
    // Fill the backlog (never accepted) until a non-blocking connect would block.
    let mut queued = Vec::new();
    loop {
        let socket = socket2_like_nonblocking_connect(&path);
        match socket {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the backlog never filled");
    }
    let err = bind(&path, DEFAULT_SOCKET_MODE).expect_err("a busy live socket is not replaced");
    assert!(
        err.to_string().contains("another process serves it"),
        "{err}"
    );
    drop(live);
}

/// A non-blocking connect: `Err` once the listener's backlog is full (EAGAIN).
fn socket2_like_nonblocking_connect(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    assert!(fd >= 0);
    // SAFETY: socket returned a fresh descriptor nothing else owns.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: all zeroes is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `addr` is initialised and the length is its size; `fd` is open.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(owned)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
