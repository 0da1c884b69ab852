//! Replays every fuzz corpus entry and every crash artifact through the function its fuzz target
//! calls, on stable, so CI checks them without nightly or cargo-fuzz.
//!
//! Layout (cargo-fuzz): `codec/fuzz/corpus/<target>/` and `codec/fuzz/artifacts/<target>/`. A new
//! target gets one arm in [`entry`]; a directory without an arm fails the test, so a target is
//! never silently skipped.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The function the fuzz target `name` calls.
fn entry(name: &str) -> Option<fn(&[u8])> {
    match name {
        "pdu_stream" => Some(codec::pdu::fuzz::pdu_stream),
        "command" => Some(codec::pdu::fuzz::command),
        _ => None,
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every (target, file) under corpus/ and artifacts/.
fn inputs() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for kind in ["corpus", "artifacts"] {
        let Ok(targets) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for t in targets {
            let t = t.unwrap();
            if !t.file_type().unwrap().is_dir() {
                continue;
            }
            let name = t.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(t.path()).unwrap() {
                let f = f.unwrap();
                if f.file_type().unwrap().is_file()
                    && !f.file_name().to_string_lossy().starts_with('.')
                {
                    out.push((name.clone(), f.path()));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn replay_corpus_and_artifacts() {
    let inputs = inputs();
    assert!(
        inputs.iter().any(|(t, _)| t == "pdu_stream"),
        "the pdu_stream corpus is missing from {}",
        fuzz_dir().display()
    );
    for (target, path) in &inputs {
        let Some(run) = entry(target) else {
            panic!(
                "no replay entry for fuzz target directory `{target}` ({})",
                path.display()
            );
        };
        let data = std::fs::read(path).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "fuzz input {} panics", path.display());
    }
    eprintln!("replayed {} fuzz inputs", inputs.len());
}
