//! Log batches waiting for the server's acknowledgement, held in memory up
//! to a bound and in a spill file past it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::batch::Batch;
use hodei_core::LogStream;
use hodei_core::Timestamp;

/// Where a waiting batch's bytes are.
#[derive(Debug)]
enum Data {
    Memory(Vec<u8>),
    Spilled { offset: u64, len: usize },
}

/// One batch waiting for its acknowledgement.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) seq: u64,
    pub(crate) stream: LogStream,
    pub(crate) at: Timestamp,
    data: Data,
}

impl Waiting {
    pub(crate) fn len(&self) -> usize {
        match &self.data {
            Data::Memory(d) => d.len(),
            Data::Spilled { len, .. } => *len,
        }
    }
}

/// The memory bound and the spill file shared by every attempt's batches.
#[derive(Debug)]
pub(crate) struct Spill {
    dir: PathBuf,
    memory_limit: usize,
    in_memory: usize,
    file: Option<File>,
    end: u64,
    spilled: usize,
}

impl Spill {
    pub(crate) fn new(dir: PathBuf, memory_limit: usize) -> Self {
        Spill {
            dir,
            memory_limit,
            in_memory: 0,
            file: None,
            end: 0,
            spilled: 0,
        }
    }

    /// Bytes of waiting batches held in memory.
    pub(crate) fn in_memory(&self) -> usize {
        self.in_memory
    }

    /// Batches held in the spill file.
    pub(crate) fn spilled(&self) -> usize {
        self.spilled
    }

    /// Takes a batch in: into memory while under the bound, else into the
    /// spill file. A file that cannot be written keeps the batch in memory
    /// (over the bound) rather than lose it.
    pub(crate) fn hold(&mut self, b: Batch) -> Waiting {
        let data = if self.in_memory + b.data.len() <= self.memory_limit {
            self.in_memory += b.data.len();
            Data::Memory(b.data)
        } else {
            match self.write(&b.data) {
                Ok(offset) => {
                    self.spilled += 1;
                    Data::Spilled {
                        offset,
                        len: b.data.len(),
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, dir = %self.dir.display(), "cannot spill log batch; keeping it in memory");
                    self.in_memory += b.data.len();
                    Data::Memory(b.data)
                }
            }
        };
        Waiting {
            seq: b.seq,
            stream: b.stream,
            at: b.at,
            data,
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<u64> {
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            // Unlinked at once: nothing is left behind if the agent dies.
            self.file = Some(tempfile::tempfile_in(&self.dir)?);
            self.end = 0;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("no spill file"));
        };
        let offset = self.end;
        file.write_all_at(data, offset)?;
        self.end += data.len() as u64;
        Ok(offset)
    }

    /// The bytes of a waiting batch.
    pub(crate) fn read(&self, w: &Waiting) -> std::io::Result<Vec<u8>> {
        match &w.data {
            Data::Memory(d) => Ok(d.clone()),
            Data::Spilled { offset, len } => {
                let Some(file) = self.file.as_ref() else {
                    return Err(std::io::Error::other("spill file missing"));
                };
                let mut buf = vec![0; *len];
                file.read_exact_at(&mut buf, *offset)?;
                Ok(buf)
            }
        }
    }

    /// A batch is acknowledged (or dropped): frees its place.
    pub(crate) fn release(&mut self, w: Waiting) {
        match w.data {
            Data::Memory(d) => self.in_memory -= d.len(),
            Data::Spilled { .. } => {
                self.spilled -= 1;
                if self.spilled == 0 {
                    // Everything in the file is acknowledged: start over.
                    if let Some(f) = self.file.as_mut() {
                        let _ = f.set_len(0);
                        let _ = f.flush();
                    }
                    self.end = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, data: &[u8]) -> Batch {
        Batch {
            seq,
            stream: LogStream::Stdout,
            at: Timestamp(seq),
            data: data.to_vec(),
        }
    }

    #[test]
    fn past_the_bound_batches_go_to_the_file_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(dir.path().to_path_buf(), 10);
        let a = s.hold(batch(0, b"0123456789"));
        let b = s.hold(batch(1, b"abcdef"));
        let c = s.hold(batch(2, b"ghij"));
        assert_eq!(s.in_memory(), 10);
        assert_eq!(s.spilled(), 2);
        assert_eq!(s.read(&a).unwrap(), b"0123456789");
        assert_eq!(s.read(&b).unwrap(), b"abcdef");
        assert_eq!(s.read(&c).unwrap(), b"ghij");
        s.release(a);
        s.release(b);
        s.release(c);
        assert_eq!((s.in_memory(), s.spilled()), (0, 0));
        let d = s.hold(batch(3, b"more"));
        assert_eq!(s.read(&d).unwrap(), b"more");
    }
}
