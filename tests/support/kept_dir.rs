//! A test's directory kept with its logs when the test fails. No crate of its own: included by
//! the test crates that need it (`#[path = ".../tests/support/kept_dir.rs"] mod kept_dir;`);
//! needs `tempfile`.

use std::path::{Path, PathBuf};

/// A test's directory (layouts, keys, data, every daemon's log): deleted when the test passes,
/// kept when it fails (dropped while a panic unwinds), with its path and the tail of every log
/// printed, so that a failure leaves its cause behind. Drop it after the processes writing into
/// it, so that the kept logs are complete.
pub struct KeptDir(Option<tempfile::TempDir>);

impl KeptDir {
    /// A new directory named `tessera-test-*`.
    pub fn new() -> Self {
        Self::with_prefix("tessera-test-")
    }

    /// A new directory named `PREFIX*`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self(Some(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("a temporary directory"),
        ))
    }

    pub fn path(&self) -> &Path {
        self.0
            .as_ref()
            .map(tempfile::TempDir::path)
            .expect("present until dropped")
    }
}

impl Default for KeptDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeptDir {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("TESSERA_KEEP_DIRS").is_some())
            && let Some(d) = self.0.take()
        {
            let path = d.keep();
            eprintln!(
                "test failed: its directory and logs are kept in {}\n{}",
                path.display(),
                log_tails(&path, 40)
            );
        }
    }
}

/// The last `n` lines of every log (`*.log`, `*.stderr`) in `dir` and its subdirectories one
/// level down.
pub fn log_tails(dir: &Path, n: usize) -> String {
    let entries = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let top = entries(dir);
    let mut files: Vec<PathBuf> = top
        .iter()
        .filter(|p| p.is_dir())
        .flat_map(|d| entries(d))
        .chain(top.iter().cloned())
        .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "stderr"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        out.push_str(&format!(
            "----- {} (last {n} of {} lines)\n{}\n",
            f.display(),
            text.lines().count(),
            tail(&text, n)
        ));
    }
    out
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
