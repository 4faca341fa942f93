//! The store's locks: the run lock (a second `flow run` on the same store waits for the first,
//! or fails with `--no-wait`; taking it also marks runs that a dead process left `running` as
//! interrupted) and the commit lock, which serialises the few file operations that put an
//! artifact in place (workers of one run commit concurrently, in threads and in Slurm jobs).

use std::fs;
use std::io::{Read, Write};

use super::record::RunRecord;
use super::{IoContext, Store, StoreError};

/// Holds the store's lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

impl Store {
    /// Takes the store's lock; if another process has it, calls `on_wait` and waits
    /// (or fails with [`StoreError::Locked`] when `wait` is false). With the lock held, runs
    /// that a dead process left `running` are marked interrupted.
    pub fn lock(&self, wait: bool, on_wait: &dyn Fn(&str)) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = format!("pid {}", owner.trim());
                if !wait {
                    return Err(StoreError::Locked {
                        path: self.root.clone(),
                        owner,
                    });
                }
                on_wait(&format!(
                    "waiting for the store lock at {} (held by {owner})…",
                    path.display()
                ));
                file.lock().at(&path)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&path),
        }
        file.set_len(0).at(&path)?;
        file.write_all(std::process::id().to_string().as_bytes())
            .at(&path)?;
        RunRecord::mark_interrupted(self)?;
        Ok(StoreLock { _file: file })
    }

    /// Takes the commit lock (`commit.lock`, an advisory `flock` released when the returned file
    /// is dropped or the process dies), waiting for its holder. `flock` locks an open file, so
    /// threads of one process exclude each other as processes do.
    pub(super) fn commit_lock(&self) -> Result<fs::File, StoreError> {
        let path = self.root.join("commit.lock");
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        file.lock().at(&path)?;
        Ok(file)
    }
}
