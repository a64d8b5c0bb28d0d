//! The SQLite ledger's spool: where a finished request's ledger row becomes durable before the
//! answer's last byte goes out.
//!
//! A SQLite commit per answer (or per group of answers) cost more CPU than the request it
//! records: WAL page writes, file locks and two thread hand-offs. The spool is a series of
//! segment files of ledger rows, one record each, beside the database (`<db>-spool/`). A segment
//! is created at [`SEGMENT_BYTES`] (a sparse file of zeros, its pages faulted in once) and
//! mapped shared: the worker that finishes a request copies its row into the mapping under a
//! short lock, and the answer goes out. A shared mapping's pages are the file's page cache,
//! so a copied row survives a crash of the process exactly as a `write` does (and as a WAL
//! commit with `synchronous=NORMAL` does); a copy costs no system call. A full segment is
//! closed and the next one (prepared ahead by the ledger, [`Spool::prepare`]) takes over.
//! The ledger actor reads what was written since its last round straight from the mappings
//! ([`Spool::written`]: every byte below a segment's written length is in a whole record and
//! never changes again) and loads it into SQLite, remembering per segment how far it loaded; it
//! deletes a closed segment once all of it is in. At start-up it loads whatever an earlier
//! process left: whole records up to the zero tail, a torn last record skipped. A segment is
//! created and deleted every few seconds under load, not every round: creating and unlinking
//! a file each 10 ms round cost the ledger thread more than the rows. A lock file keeps one
//! gateway per ledger file. This module only owns the files; the row format and the loading
//! are `governance::ledger`'s.

use memmap2::MmapRaw;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Segment files end so; anything else in the directory is left alone.
const SEGMENT: &str = ".rows";

/// A segment's size: at ~200 bytes a row, some 10,000 rows (about half a second of a busy
/// one-core gateway). Small enough that the two mapped segments (the current one and the
/// spare) add 4 MiB to the resident set; a row longer than this gets a segment of its own.
pub const SEGMENT_BYTES: usize = 2 << 20;

/// An open spool: the segment being written, the closed ones not yet handed to the ledger, and
/// the directory's lock.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Names this process's segments: `<unix ms at open>-<sequence>.rows`.
    prefix: String,
    sequence: AtomicU64,
    /// The segment size (smaller in tests).
    segment_bytes: usize,
    state: Mutex<State>,
    /// Held (locked) for the life of the spool.
    _lock: File,
}

#[derive(Debug)]
struct State {
    current: Arc<Segment>,
    /// Bytes of `current` that hold whole records.
    written: usize,
    /// Full segments and their lengths, not yet taken by [`Spool::written`].
    closed: Vec<(Arc<Segment>, usize)>,
    /// The next segment, created ahead ([`Spool::prepare`]).
    spare: Option<Arc<Segment>>,
    /// The gateway is stopping ([`Spool::stop`]): no segment is created ahead any more.
    stopping: bool,
}

/// A segment file, mapped shared for its whole size.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    map: MmapRaw,
}

/// Rows to load: a segment's first `end` bytes (whole records, then possibly a torn record
/// and zeros when an earlier process left it).
#[derive(Debug)]
pub struct Written {
    path: PathBuf,
    bytes: Bytes,
    end: usize,
    /// No writer touches the segment again: once loaded, it can be deleted.
    pub closed: bool,
}

#[derive(Debug)]
enum Bytes {
    Mapped(Arc<Segment>),
    Read(Vec<u8>),
}

impl Written {
    /// The segment's name as the database remembers it (its file name).
    pub fn name(&self) -> String {
        segment_name(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How far the segment is written.
    pub fn end(&self) -> usize {
        self.end
    }

    /// The bytes from `from` to the written end.
    #[expect(
        unsafe_code,
        reason = "reads a shared mapping below its written length (see `Spool::append`)"
    )]
    pub fn bytes(&self, from: usize) -> &[u8] {
        let from = from.min(self.end);
        match &self.bytes {
            Bytes::Read(bytes) => &bytes[from..self.end],
            // SAFETY: below `end` the mapping holds whole records no writer touches again.
            Bytes::Mapped(segment) => unsafe {
                std::slice::from_raw_parts(segment.map.as_ptr().add(from), self.end - from)
            },
        }
    }
}

impl Spool {
    /// Opens the spool of the SQLite file at `db` (creating `<db>-spool/`), locks it against
    /// another gateway, and starts a segment. Also returns the segments an earlier process
    /// left (read whole, maybe not yet in the database), oldest first.
    pub fn open(db: &Path) -> Result<(Self, Vec<Written>), String> {
        Self::open_sized(db, SEGMENT_BYTES)
    }

    /// [`Spool::open`] with segments of `segment_bytes` (tests fill one quickly).
    pub fn open_sized(db: &Path, segment_bytes: usize) -> Result<(Self, Vec<Written>), String> {
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
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| fail("list", e))? {
            let path = entry.map_err(|e| fail("list", e))?.path();
            if path.to_str().is_some_and(|p| p.ends_with(SEGMENT)) {
                paths.push(path);
            }
        }
        paths.sort();
        let left = paths
            .into_iter()
            .map(|path| Written::from_file(path).map_err(|e| fail("read a segment", e)))
            .collect::<Result<_, _>>()?;
        let prefix = format!("{:013}", super::now_ms());
        let sequence = AtomicU64::new(0);
        let first = create_segment(&dir, &prefix, &sequence, segment_bytes)
            .map_err(|e| fail("segment", e))?;
        let spool = Self {
            dir,
            prefix,
            sequence,
            segment_bytes,
            state: Mutex::new(State {
                current: first,
                written: 0,
                closed: Vec::new(),
                spare: None,
                stopping: false,
            }),
            _lock: lock,
        };
        Ok((spool, left))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `line` (one row's record, `governance::spool_format`): a copy into the segment's
    /// mapping. Once this returns the row survives a crash of the process.
    #[expect(
        unsafe_code,
        reason = "a copy into a shared mapping costs a fifth of a write(2) (measured)"
    )]
    pub fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.written + line.len() > state.current.len() {
            // Full: the spare the ledger prepared, else a new one here.
            let next = match state.spare.take() {
                Some(spare) if spare.len() >= line.len() => spare,
                _ => self.create(self.segment_bytes.max(line.len()))?,
            };
            let full = std::mem::replace(&mut state.current, next);
            let written = std::mem::replace(&mut state.written, 0);
            state.closed.push((full, written));
        }
        let at = state.written;
        // SAFETY: `at + line.len()` is within the mapping; bytes at and past `written` are
        // only touched here, under the lock, and readers ([`Written::bytes`]) stop below a
        // `written` they read under it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                line.as_ptr(),
                state.current.map.as_mut_ptr().add(at),
                line.len(),
            );
        }
        state.written = at + line.len();
        Ok(())
    }

    /// What the writers have written so far: the closed segments not yet taken (oldest first),
    /// then the one being written, up to its last whole record.
    pub fn written(&self) -> Vec<Written> {
        let mut state = self.lock();
        let mut out: Vec<Written> = state
            .closed
            .drain(..)
            .map(|(segment, end)| Written::mapped(segment, end, true))
            .collect();
        out.push(Written::mapped(state.current.clone(), state.written, false));
        out
    }

    /// Creates the segment the writers take when theirs is full, unless there is one (on the
    /// ledger's thread, so that a writer seldom pays for a new file).
    pub fn prepare(&self) -> std::io::Result<()> {
        {
            let state = self.lock();
            if state.spare.is_some() || state.stopping {
                return Ok(());
            }
        }
        let spare = self.create(self.segment_bytes)?;
        self.lock().spare = Some(spare);
        Ok(())
    }

    fn create(&self, bytes: usize) -> std::io::Result<Arc<Segment>> {
        create_segment(&self.dir, &self.prefix, &self.sequence, bytes)
    }
}

/// A new segment of `bytes` zeros in `dir`, mapped, its pages faulted in writable.
fn create_segment(
    dir: &Path,
    prefix: &str,
    sequence: &AtomicU64,
    bytes: usize,
) -> std::io::Result<Arc<Segment>> {
    loop {
        let sequence = sequence.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}-{sequence:09}{SEGMENT}"));
        // A gateway restarted within the same millisecond finds its predecessor's names
        // taken: the next sequence.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        };
        file.set_len(bytes as u64)?;
        let map = MmapRaw::map_raw(&file)?;
        // Every page faulted in now, in one call, rather than one fault per page on the
        // writers (older kernels refuse the advice: then the writers fault them).
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::PopulateWrite);
        return Ok(Arc::new(Segment { path, map }));
    }
}

impl Segment {
    fn len(&self) -> usize {
        self.map.len()
    }
}

impl Written {
    /// A segment file as a crashed or stopped process left it, read whole (closed).
    pub fn from_file(path: PathBuf) -> std::io::Result<Self> {
        let bytes = std::fs::read(&path)?;
        Ok(Self {
            path,
            end: bytes.len(),
            bytes: Bytes::Read(bytes),
            closed: true,
        })
    }

    fn mapped(segment: Arc<Segment>, end: usize, closed: bool) -> Self {
        Self {
            path: segment.path.clone(),
            bytes: Bytes::Mapped(segment),
            end,
            closed,
        }
    }
}

impl Spool {
    /// The gateway is stopping (its last load comes next): the spare segment, never written,
    /// goes, and no other is created ahead. The others stay for the next start, which loads
    /// what is past their marks and deletes them. Writers still work (a full segment's
    /// successor is then created by the writer).
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopping = true;
        if let Some(spare) = state.spare.take() {
            let _ = std::fs::remove_file(&spare.path);
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.stop();
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

    fn texts(written: &[Written]) -> Vec<(Vec<u8>, bool)> {
        written
            .iter()
            .map(|w| (w.bytes(0).to_vec(), w.closed))
            .collect()
    }

    #[test]
    fn a_full_segment_closes_what_is_written_is_read_back_and_a_second_gateway_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("ledger.db");
        // Room for two of these lines a segment.
        let (spool, left) = Spool::open_sized(&db, 8).expect("open");
        assert!(left.is_empty());
        assert_eq!(texts(&spool.written()), [(b"".to_vec(), false)]);
        spool.append(b"one\n").expect("append");
        spool.append(b"two\n").expect("append");
        assert_eq!(texts(&spool.written()), [(b"one\ntwo\n".to_vec(), false)]);
        spool.prepare().expect("spare");
        spool.append(b"three\n").expect("append");
        // A line longer than a segment gets one of its own.
        spool.append(b"a long line\n").expect("append");
        assert_eq!(
            texts(&spool.written()),
            [
                (b"one\ntwo\n".to_vec(), true),
                (b"three\n".to_vec(), true),
                (b"a long line\n".to_vec(), false)
            ]
        );
        // Taken once: the closed ones are the ledger's now.
        assert_eq!(texts(&spool.written()).len(), 1);
        let err = Spool::open(&db).expect_err("locked");
        assert!(err.contains("another gateway"), "{err}");
        drop(spool);
        // What the first left: every segment, in order, each with its zero tail.
        let (_again, left) = Spool::open(&db).expect("reopen");
        let texts: Vec<Vec<u8>> = left.iter().map(|w| w.bytes(0).to_vec()).collect();
        assert_eq!(
            texts,
            [
                b"one\ntwo\n".to_vec(),
                b"three\n\0\0".to_vec(),
                b"a long line\n".to_vec(),
            ]
        );
    }
}
