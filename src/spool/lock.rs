//! The spool directory's lock: one process owns a directory, through an exclusive
//! `flock` on `DIR/lock` held for the life of the [`DirLock`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// The lock file's name in the spool directory.
pub const FILE_NAME: &str = "lock";

/// Held while the spool is open; the kernel releases the lock when the process
/// ends, however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another process holds the lock {path}")]
    Held { path: String },
    #[error("opening the lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl DirLock {
    /// Takes the lock on `dir` without waiting.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(FILE_NAME);
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Io {
                path: shown.clone(),
                source,
            })?;
        // SAFETY: `flock` only reads the descriptor, which `file` keeps open for
        // the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.kind() == io::ErrorKind::WouldBlock {
                LockError::Held { path: shown }
            } else {
                LockError::Io {
                    path: shown,
                    source: error,
                }
            });
        }
        Ok(DirLock { _file: file })
    }

    /// True when the lock file was deleted while held: another process could then
    /// create and lock a new one.
    pub fn is_unlinked(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self._file.metadata().is_ok_and(|m| m.nlink() == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let second = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(second, LockError::Held { .. }), "{second}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
