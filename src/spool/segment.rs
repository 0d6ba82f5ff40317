//! Segment files: the spool's append-only files of records, named after the first
//! record number they hold (`00000000000000000042.seg`), read back by offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// Segment file names end with this.
pub const EXTENSION: &str = "seg";

/// The file name of the segment whose first record is `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:020}.{EXTENSION}")
}

/// The segment files in `dir`, oldest (lowest id) first. Other files are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(&format!(".{EXTENSION}")) else {
            continue;
        };
        if stem.len() == 20 {
            if let Ok(id) = stem.parse::<u64>() {
                found.push((id, entry.path()));
            }
        }
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    Ok(found)
}

/// One open segment file.
#[derive(Debug)]
pub struct Segment {
    pub id: u64,
    pub path: PathBuf,
    file: File,
    /// Bytes in the file.
    pub len: u64,
    /// Appended since the last sync.
    dirty: bool,
}

impl Segment {
    /// Creates `dir/<id>.seg` (empty; fails if it exists).
    pub fn create(dir: &Path, id: u64) -> io::Result<Segment> {
        let path = dir.join(file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Segment {
            id,
            path,
            file,
            len: 0,
            dirty: false,
        })
    }

    /// Opens an existing segment for reading (and truncating its tail).
    pub fn open(id: u64, path: PathBuf) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Segment {
            id,
            path,
            file,
            len,
            dirty: false,
        })
    }

    /// The whole file's bytes (for recovery).
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; usize::try_from(self.len).unwrap_or(usize::MAX)];
        self.file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    /// Cuts the file to `len` bytes and syncs it.
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.len = len;
        Ok(())
    }

    /// Appends `bytes` (one or more whole records); returns the offset they start at.
    /// On a short or failed write the file is cut back to where it was.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let offset = self.len;
        if let Err(error) = self.file.write_all(bytes) {
            let _ = self.file.set_len(offset);
            return Err(error);
        }
        self.len += bytes.len() as u64;
        self.dirty = true;
        Ok(offset)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    /// True when something was appended since the last [`Self::sync`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Makes what was appended durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// True when the file was deleted (or moved out of reach: no name links to it)
    /// while open.
    pub fn is_unlinked(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        self.file.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    /// Deletes the file (already gone is not an error: a cleaner may have deleted it).
    pub fn remove(self) -> io::Result<()> {
        drop(self.file);
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_bytes_read_back_at_their_offset_and_list_sorts_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 42).unwrap();
        assert_eq!(seg.append(b"abc").unwrap(), 0);
        assert_eq!(seg.append(b"defg").unwrap(), 3);
        assert_eq!(seg.read_at(3, 4).unwrap(), b"defg");
        seg.sync().unwrap();
        assert!(!seg.is_dirty());
        Segment::create(dir.path(), 7).unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let ids: Vec<u64> = list(dir.path())
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids, [7, 42]);
        assert!(Segment::create(dir.path(), 42).is_err(), "never reused");
        let mut reopened = Segment::open(42, dir.path().join(file_name(42))).unwrap();
        assert_eq!(reopened.read_all().unwrap(), b"abcdefg");
        reopened.truncate(3).unwrap();
        assert_eq!(fs::metadata(&reopened.path).unwrap().len(), 3);
    }
}
