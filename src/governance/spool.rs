//! The SQLite ledger's spool: where a finished request's ledger row becomes durable before the
//! answer's last byte goes out.
//!
//! A SQLite commit per answer (or per group of answers) cost more CPU than the request it
//! records: WAL page writes, file locks and two thread hand-offs. The spool is an append-only
//! file of ledger rows, one line each, beside the database (`<db>-spool/`): the worker that
//! finishes a request appends its row with one `write` to the page cache, which survives a
//! process crash as a WAL commit with `synchronous=NORMAL` does, and the answer goes out.
//! The ledger actor moves the rows into SQLite in the background ([`Spool::rotate`] closes the
//! segment being written, the actor loads it in one transaction and deletes it), before every
//! usage query, and at start-up for whatever a crashed process left. A lock file keeps one
//! gateway per ledger file. This module only owns the files; the row format and the loading
//! are `governance::ledger`'s.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Segment files end so; anything else in the directory is left alone.
const SEGMENT: &str = ".rows";

/// An open spool: the segment being written and the directory's lock.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Names this process's segments: `<unix ms at open>-<sequence>.rows`.
    prefix: String,
    current: Mutex<Segment>,
    /// Held (locked) for the life of the spool.
    _lock: File,
}

#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
    bytes: u64,
    sequence: u64,
}

impl Spool {
    /// Opens the spool of the SQLite file at `db` (creating `<db>-spool/`), locks it against
    /// another gateway, and starts a segment. Also returns the segments an earlier process
    /// left (not yet in the database), oldest first.
    pub fn open(db: &Path) -> Result<(Self, Vec<PathBuf>), String> {
        let mut dir = db.as_os_str().to_owned();
        dir.push("-spool");
        let dir = PathBuf::from(dir);
        let fail =
            |what: &str, e: std::io::Error| format!("ledger spool {}: {what}: {e}", dir.display());
        std::fs::create_dir_all(&dir).map_err(|e| fail("create", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| fail("lock file", e))?;
        lock.try_lock().map_err(|_| {
            format!(
                "ledger {}: another gateway is using this ledger file (its spool {} is locked); \
                 replicas share a PostgreSQL ledger instead",
                db.display(),
                dir.display()
            )
        })?;
        let mut left = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| fail("list", e))? {
            let path = entry.map_err(|e| fail("list", e))?.path();
            if path.to_str().is_some_and(|p| p.ends_with(SEGMENT)) {
                left.push(path);
            }
        }
        left.sort();
        let prefix = format!("{:013}", super::now_ms());
        let first = Segment::create(&dir, &prefix, 0).map_err(|e| fail("segment", e))?;
        Ok((
            Self {
                dir,
                prefix,
                current: Mutex::new(first),
                _lock: lock,
            },
            left,
        ))
    }

    /// Appends `line` (one row, newline-terminated) in one write. Once this returns the row
    /// survives a crash of the process.
    pub fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut segment = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (&segment.file).write_all(line)?;
        segment.bytes += line.len() as u64;
        Ok(())
    }

    /// Closes the segment being written, when it holds anything, and starts the next one;
    /// returns the closed segment's path (no writer touches it again).
    pub fn rotate(&self) -> std::io::Result<Option<PathBuf>> {
        let mut segment = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if segment.bytes == 0 {
            return Ok(None);
        }
        let next = Segment::create(&self.dir, &self.prefix, segment.sequence + 1)?;
        Ok(Some(std::mem::replace(&mut *segment, next).path))
    }
}

impl Segment {
    /// A new, empty segment: the first free name from `sequence` on (a gateway restarted
    /// within the same millisecond finds its predecessor's names taken).
    fn create(dir: &Path, prefix: &str, mut sequence: u64) -> std::io::Result<Self> {
        loop {
            let path = dir.join(format!("{prefix}-{sequence:09}{SEGMENT}"));
            match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        path,
                        bytes: 0,
                        sequence,
                    });
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => sequence += 1,
                Err(err) => return Err(err),
            }
        }
    }
}

/// The segment's name as the database remembers it (its file name).
pub fn segment_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_closes_a_segment_only_when_it_holds_rows_and_a_second_gateway_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("ledger.db");
        let (spool, left) = Spool::open(&db).expect("open");
        assert!(left.is_empty());
        assert_eq!(spool.rotate().expect("rotate"), None);
        spool.append(b"one\n").expect("append");
        spool.append(b"two\n").expect("append");
        let closed = spool.rotate().expect("rotate").expect("a closed segment");
        assert_eq!(std::fs::read(&closed).expect("read"), b"one\ntwo\n");
        spool.append(b"three\n").expect("append");
        let err = Spool::open(&db).expect_err("locked");
        assert!(err.contains("another gateway"), "{err}");
        drop(spool);
        // What the first left: both segments, in order.
        let (_again, left) = Spool::open(&db).expect("reopen");
        let texts: Vec<Vec<u8>> = left
            .iter()
            .map(|p| std::fs::read(p).expect("read"))
            .collect();
        assert_eq!(texts, [b"one\ntwo\n".to_vec(), b"three\n".to_vec()]);
    }
}
