//! The spool directory's lock: one process owns a directory, through exclusive
//! `flock`s on the directory itself and on `DIR/lock`, held for the life of the
//! [`DirLock`]. The directory's own lock holds when the lock file is deleted (a tmp
//! cleaner, an operator); the lock file shows the owner to `fuser` and `lsof`.

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
    /// The directory, locked; `None` where its filesystem cannot lock it.
    _dir: Option<File>,
    file: File,
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
        let shown = dir.display().to_string();
        let io = |source| LockError::Io {
            path: shown.clone(),
            source,
        };
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .map_err(io)?;
        // Best effort: where a directory cannot be locked (NFS emulates `flock`
        // with write locks, which a directory opened to read cannot take), the
        // lock file alone is the lock, as before the directory's own.
        let dir_lock = match flock(&handle, &shown) {
            Ok(()) => Some(handle),
            Err(held @ LockError::Held { .. }) => return Err(held),
            Err(LockError::Io { .. }) => None,
        };
        let file = Self::lock_file(dir)?;
        Ok(DirLock {
            _dir: dir_lock,
            file,
        })
    }

    /// Makes and locks the lock file again (it was deleted) in the directory this
    /// lock already holds.
    pub fn renew(&mut self, dir: &Path) -> Result<(), LockError> {
        self.file = Self::lock_file(dir)?;
        Ok(())
    }

    fn lock_file(dir: &Path) -> Result<File, LockError> {
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
        flock(&file, &shown)?;
        Ok(file)
    }

    /// True when the lock file was deleted while held: another process could then
    /// create and lock a new one.
    pub fn is_unlinked(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self.file.metadata().is_ok_and(|m| m.nlink() == 0)
    }
}

/// An exclusive `flock` on `file` without waiting; `Held` when another open file
/// holds it.
fn flock(file: &File, shown: &str) -> Result<(), LockError> {
    // SAFETY: `flock` only reads the descriptor, which `file` keeps open for the
    // duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    Err(if error.kind() == io::ErrorKind::WouldBlock {
        LockError::Held {
            path: shown.to_owned(),
        }
    } else {
        LockError::Io {
            path: shown.to_owned(),
            source: error,
        }
    })
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

    /// The lock file deleted (a tmp cleaner, an operator) does not let a second
    /// owner in: the directory's own lock still holds (a second proxy took the spool
    /// within the 50 ms before the first took a new lock file, and both replayed
    /// it; found by an operator review).
    #[test]
    fn a_lock_file_deleted_while_held_does_not_let_a_second_lock_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = DirLock::acquire(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        assert!(first.is_unlinked());
        let second = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(second, LockError::Held { .. }), "{second}");
        first.renew(dir.path()).unwrap();
        assert!(!first.is_unlinked());
        assert!(dir.path().join(FILE_NAME).exists());
    }
}
