//! The durable copy of the map: a redb database in `--data-dir`.
//!
//! - table `maps`: generation → map JSON, for every map not yet committed and the newest
//!   committed one (older ones are pruned when a newer one commits);
//! - table `meta`: `committed` → the newest committed generation;
//! - table `files`: `cluster` → the text of the cluster file the last reload (or the first
//!   start) applied, which the next reload compares the file against.
//!
//! A map is written in one durable transaction (redb's default `Durability::Immediate`: fsync
//! before `commit` returns) before anyone sees it, so a manager killed at any point comes back
//! with every generation it ever published, and re-publishes those it had not committed.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use crate::map::{ClusterMap, Generation};

const MAPS: TableDefinition<u64, &str> = TableDefinition::new("maps");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FILES: TableDefinition<&str, &str> = TableDefinition::new("files");
const CLUSTER_FILE_KEY: &str = "cluster";
const COMMITTED_KEY: &str = "committed";
const PHASE_1A_DONE_KEY: &str = "phase_1a_done";
/// The database file inside `--data-dir`.
pub const DB_FILE: &str = "manager.redb";

/// A store operation failed: the message names the file and the step.
#[derive(Debug, thiserror::Error)]
#[error("store {path}: {step}: {message}")]
pub struct StoreError {
    path: String,
    step: &'static str,
    message: String,
}

/// What the store held at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The newest committed map.
    pub committed: ClusterMap,
    /// Durable maps newer than it, in generation order: publish them again.
    pub pending: Vec<ClusterMap>,
    /// The cluster file text last applied (absent in stores written before it was recorded).
    pub cluster_file: Option<String>,
    /// The newest generation whose phase 1a was done (0: none recorded): its switches and
    /// older ones may have reached their new owners, so no cancellation gives them back.
    pub phase_1a_done: Generation,
}

/// The open database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in directory `dir`, creating the directory too.
    /// redb locks the file: a second manager on the same directory fails here.
    ///
    /// # Errors
    /// The directory or database cannot be created or opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let err = |step, message: String| StoreError {
            path: path.display().to_string(),
            step,
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("create data directory", e.to_string()))?;
        let db = Database::create(&path).map_err(|e| err("open", e.to_string()))?;
        Ok(Self { db, path })
    }

    fn err(&self, step: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            step,
            message: e.to_string(),
        }
    }

    /// The committed map and the durable maps after it; `None` for a new store.
    ///
    /// # Errors
    /// A read fails, or a stored map does not parse or validate.
    pub fn load(&self) -> Result<Option<Loaded>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err("read", e))?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err("open meta", e)),
        };
        let Some(committed) = meta
            .get(COMMITTED_KEY)
            .map_err(|e| self.err("read meta", e))?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let phase_1a_done = meta
            .get(PHASE_1A_DONE_KEY)
            .map_err(|e| self.err("read meta", e))?
            .map_or(0, |g| g.value());
        let maps = tx.open_table(MAPS).map_err(|e| self.err("open maps", e))?;
        let mut committed_map = None;
        let mut pending = Vec::new();
        for row in maps
            .range(committed..)
            .map_err(|e| self.err("read maps", e))?
        {
            let (g, json) = row.map_err(|e| self.err("read maps", e))?;
            let map: ClusterMap = serde_json::from_str(json.value())
                .map_err(|e| self.err("decode map", format!("generation {}: {e}", g.value())))?;
            map.validate()
                .map_err(|e| self.err("check map", format!("generation {}: {e}", g.value())))?;
            if map.generation != g.value() {
                return Err(self.err(
                    "check map",
                    format!("key {} holds generation {}", g.value(), map.generation),
                ));
            }
            if g.value() == committed {
                committed_map = Some(map);
            } else {
                pending.push(map);
            }
        }
        let committed = committed_map.ok_or_else(|| {
            self.err(
                "load",
                format!("committed generation {committed} has no map"),
            )
        })?;
        let cluster_file = match tx.open_table(FILES) {
            Ok(t) => t
                .get(CLUSTER_FILE_KEY)
                .map_err(|e| self.err("read files", e))?
                .map(|v| v.value().to_owned()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.err("open files", e)),
        };
        Ok(Some(Loaded {
            committed,
            pending,
            cluster_file,
            phase_1a_done,
        }))
    }

    /// Writes `map` durably (before it is published).
    ///
    /// # Errors
    /// The write or the commit fails; then nothing was written.
    pub fn put(&self, map: &ClusterMap) -> Result<(), StoreError> {
        self.write(Some(map), false, None)
    }

    /// Writes `map` (if any) and records `file` as the cluster file last applied, in one durable
    /// transaction.
    ///
    /// # Errors
    /// The write or the commit fails; then nothing was written.
    pub fn put_with_file(&self, map: Option<&ClusterMap>, file: &str) -> Result<(), StoreError> {
        self.write(map, false, Some(file))
    }

    /// Writes `map` durably as the committed map (the first map of a new cluster).
    ///
    /// # Errors
    /// The write or the commit fails; then nothing was written.
    pub fn put_committed(&self, map: &ClusterMap, file: Option<&str>) -> Result<(), StoreError> {
        self.write(Some(map), true, file)
    }

    fn write(
        &self,
        map: Option<&ClusterMap>,
        committed: bool,
        file: Option<&str>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err("write", e))?;
        {
            if let Some(map) = map {
                let json = serde_json::to_string(map).map_err(|e| self.err("encode map", e))?;
                let mut maps = tx.open_table(MAPS).map_err(|e| self.err("open maps", e))?;
                maps.insert(map.generation, json.as_str())
                    .map_err(|e| self.err("write map", e))?;
                let mut meta = tx.open_table(META).map_err(|e| self.err("open meta", e))?;
                if committed {
                    meta.insert(COMMITTED_KEY, map.generation)
                        .map_err(|e| self.err("write meta", e))?;
                }
            }
            if let Some(text) = file {
                let mut files = tx
                    .open_table(FILES)
                    .map_err(|e| self.err("open files", e))?;
                files
                    .insert(CLUSTER_FILE_KEY, text)
                    .map_err(|e| self.err("write files", e))?;
            }
        }
        tx.commit().map_err(|e| self.err("commit", e))
    }

    /// Records that the phase 1a of `generation` is done, before any server but its old owners
    /// may get it (`plan::cancel_moves_to_down` never gives back a switch that may have reached
    /// its new owner). Never moves backwards.
    ///
    /// # Errors
    /// The write or the commit fails.
    pub fn set_phase_1a_done(&self, generation: Generation) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err("write", e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err("open meta", e))?;
            let old = meta
                .get(PHASE_1A_DONE_KEY)
                .map_err(|e| self.err("read meta", e))?
                .map_or(0, |g| g.value());
            if generation <= old {
                return Ok(());
            }
            meta.insert(PHASE_1A_DONE_KEY, generation)
                .map_err(|e| self.err("write meta", e))?;
        }
        tx.commit().map_err(|e| self.err("commit", e))
    }

    /// Records that `generation` is committed and prunes older maps. Never moves backwards.
    ///
    /// # Errors
    /// The write or the commit fails.
    pub fn set_committed(&self, generation: Generation) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err("write", e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err("open meta", e))?;
            let old = meta
                .get(COMMITTED_KEY)
                .map_err(|e| self.err("read meta", e))?
                .map_or(0, |g| g.value());
            if generation <= old {
                return Ok(());
            }
            meta.insert(COMMITTED_KEY, generation)
                .map_err(|e| self.err("write meta", e))?;
            let mut maps = tx.open_table(MAPS).map_err(|e| self.err("open maps", e))?;
            maps.retain_in(..generation, |_, _| false)
                .map_err(|e| self.err("prune maps", e))?;
        }
        tx.commit().map_err(|e| self.err("commit", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::map::ClusterMap;

    fn map(g: Generation) -> ClusterMap {
        let mut m = crate::plan::tests::two_servers();
        m.generation = g;
        m
    }

    #[test]
    fn new_store_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Store::open(dir.path()).unwrap().load().unwrap(), None);
    }

    #[test]
    fn committed_and_pending_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_committed(&map(1), Some("f1")).unwrap();
            s.put_with_file(None, "f2").unwrap();
            s.put(&map(2)).unwrap();
            s.put(&map(3)).unwrap();
            s.set_committed(2).unwrap();
            s.set_committed(1).unwrap(); // never backwards
            s.set_phase_1a_done(3).unwrap();
            s.set_phase_1a_done(2).unwrap(); // never backwards
        }
        let s = Store::open(dir.path()).unwrap();
        let l = s.load().unwrap().unwrap();
        assert_eq!(l.committed.generation, 2);
        assert_eq!(l.phase_1a_done, 3);
        assert_eq!(l.pending, vec![map(3)]);
        assert_eq!(l.cluster_file.as_deref(), Some("f2"));
    }

    #[test]
    fn second_open_of_the_same_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("open"), "{e}");
    }
}
