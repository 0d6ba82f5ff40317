//! The lock file next to the socket (`<socket>.lock`): whoever holds an exclusive
//! `flock(2)` on it owns the socket path, so two proxies started at once cannot
//! both decide that the socket at the path is a leftover and replace each other's.
//!
//! The lock is taken before the path is looked at and held until the proxy has
//! removed its socket. The file is removed on release, while still locked; a start
//! that opened the file just before that removal finds, once it holds the lock,
//! that the path no longer names the file it locked, and opens it again.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ReaderError;

/// Attempts before giving up when the lock file keeps being replaced under us.
const ATTEMPTS: usize = 16;

/// The lock file path for the socket at `socket`: the same path with `.lock` added.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = OsString::from(socket.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive lock on `<socket>.lock`, held until dropped (which removes the file).
#[derive(Debug)]
pub struct PathLock {
    path: PathBuf,
    file: File,
}

impl PathLock {
    /// Takes the lock for the socket at `socket` without waiting. Fails with
    /// [`ReaderError::PathLocked`] when another process holds it.
    pub fn acquire(socket: &Path) -> Result<PathLock, ReaderError> {
        let path = lock_path(socket);
        let error = |step: &'static str, source: io::Error| ReaderError::Lock {
            path: path.clone(),
            step,
            source,
        };
        for _ in 0..ATTEMPTS {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| match socket.parent() {
                    Some(dir) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {
                        ReaderError::NoDirectory {
                            path: socket.to_owned(),
                            dir: dir.to_owned(),
                        }
                    }
                    // The directory is there but takes no new file (no write
                    // permission, a read-only or pseudo file system such as /proc).
                    Some(dir)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ENOENT)
                        ) =>
                    {
                        ReaderError::DirectoryNotWritable {
                            path: socket.to_owned(),
                            dir: dir.to_owned(),
                            source: e,
                        }
                    }
                    _ => error("open", e),
                })?;
            // SAFETY: plain syscall on a descriptor `file` owns and keeps open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let source = io::Error::last_os_error();
                if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Err(ReaderError::PathLocked {
                        path: socket.to_owned(),
                        lock: path,
                    });
                }
                return Err(error("flock", source));
            }
            // The holder before us may have removed the file after we opened it:
            // then our lock is on a file nobody else will ever look at.
            let ours = file.metadata().map_err(|e| error("fstat", e))?;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                    return Ok(PathLock { path, file });
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(error("stat", e)),
            }
        }
        Err(error(
            "open",
            io::Error::other("the lock file kept being replaced"),
        ))
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the lock file at the path is still the one locked (a tmp cleaner
    /// may have deleted it, and another start then lock a new one).
    pub fn is_current(&self) -> bool {
        match (self.file.metadata(), fs::symlink_metadata(&self.path)) {
            (Ok(ours), Ok(now)) => ours.dev() == now.dev() && ours.ino() == now.ino(),
            _ => false,
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Remove the file while still holding the lock, and only if it is ours.
        let ours = self.file.metadata().ok();
        let now = fs::symlink_metadata(&self.path).ok();
        if let (Some(ours), Some(now)) = (ours, now) {
            if ours.dev() == now.dev() && ours.ino() == now.ino() {
                let _ = fs::remove_file(&self.path);
            }
        }
        // Closing `file` releases the lock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquire_fails_while_the_first_is_held_and_succeeds_after() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let first = PathLock::acquire(&socket).unwrap();
        assert_eq!(first.path(), dir.path().join("s.sock.lock"));
        let err = PathLock::acquire(&socket).unwrap_err();
        assert!(matches!(err, ReaderError::PathLocked { .. }), "{err}");
        drop(first);
        assert!(!lock_path(&socket).exists(), "released lock file removed");
        let _again = PathLock::acquire(&socket).unwrap();
    }

    #[test]
    fn a_deleted_lock_file_is_no_longer_current_and_can_be_taken_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let first = PathLock::acquire(&socket).unwrap();
        assert!(first.is_current());
        fs::remove_file(lock_path(&socket)).unwrap();
        assert!(!first.is_current());
        let second = PathLock::acquire(&socket).unwrap();
        assert!(second.is_current());
        drop(first);
        assert!(
            lock_path(&socket).exists(),
            "the old lock left the new file alone"
        );
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let target = dir.path().join("precious");
        fs::write(&target, b"data").unwrap();
        std::os::unix::fs::symlink(&target, lock_path(&socket)).unwrap();
        let err = PathLock::acquire(&socket).unwrap_err();
        assert!(
            matches!(err, ReaderError::Lock { step: "open", .. }),
            "{err}"
        );
        assert_eq!(fs::read(&target).unwrap(), b"data");
    }

    /// Found by a review: "socket lock file /proc/x.sock.lock: open failed: No such
    /// file or directory" named neither the socket nor what to do.
    #[test]
    fn a_socket_path_in_a_directory_that_takes_no_files_says_so() {
        let socket = Path::new("/proc/boundary-log-proxy-test.sock");
        let err = PathLock::acquire(socket).unwrap_err();
        assert!(
            matches!(&err, ReaderError::DirectoryNotWritable { path, dir, .. }
                if path == socket && dir == Path::new("/proc")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("cannot create files in its directory /proc"),
            "{err}"
        );
    }

    #[test]
    fn a_socket_path_in_a_missing_directory_says_the_directory_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent").join("proxy.sock");
        let err = PathLock::acquire(&socket).unwrap_err();
        assert!(
            matches!(&err, ReaderError::NoDirectory { dir: d, .. } if d == &dir.path().join("absent")),
            "{err}"
        );
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
