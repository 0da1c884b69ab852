//! Credentials of the control API (docs/cluster.md, "Credentials"): a credential is a random
//! token in a file readable only by its owner. The manager holds the operator's and every
//! server's; a caller presents its own as `Authorization: Bearer TOKEN`.

use std::path::Path;

/// Shortest token accepted: 16 characters (`head -c 32 /dev/urandom | base64` makes 44).
pub const TOKEN_CHARS_MIN: usize = 16;
/// Longest token accepted (it travels in an HTTP header).
pub const TOKEN_CHARS_MAX: usize = 1024;

/// Why a credential file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("credential file {path}: {message}")]
pub struct CredentialError {
    /// The file.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Reads the token in the credential file at `path`: one line of 16 to 1024 visible ASCII
/// characters (surrounding whitespace is ignored). The file must not be readable or writable by
/// group or others.
///
/// # Errors
/// The file cannot be read, has a group or world permission bit, or holds no valid token.
pub fn read_token(path: &Path) -> Result<String, CredentialError> {
    let err = |message: String| CredentialError {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".to_owned()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "mode {mode:04o} lets group or others access the token (expected 0600: chmod 600 {})",
                path.display()
            )));
        }
    }
    if meta.len() > 4096 {
        return Err(err(format!(
            "{} bytes is not a token (expected one line of {TOKEN_CHARS_MIN} to \
             {TOKEN_CHARS_MAX} characters)",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let token = text.trim();
    if token.len() < TOKEN_CHARS_MIN || token.len() > TOKEN_CHARS_MAX {
        return Err(err(format!(
            "the token has {} characters (expected {TOKEN_CHARS_MIN} to {TOKEN_CHARS_MAX}, e.g. \
             from head -c 32 /dev/urandom | base64)",
            token.len()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(err(
            "the token has spaces or non-ASCII characters (expected one line of visible ASCII, \
             e.g. from head -c 32 /dev/urandom | base64)"
                .to_owned(),
        ));
    }
    Ok(token.to_owned())
}

/// Whether `presented` equals `expected`, in time that depends only on their lengths (not on
/// where they first differ), so that timing does not reveal a token byte by byte.
#[must_use]
pub fn tokens_equal(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!*e);
        diff |= p ^ e;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn equal_only_when_identical() {
        assert!(tokens_equal(b"abcdefgh", b"abcdefgh"));
        assert!(!tokens_equal(b"abcdefgX", b"abcdefgh"));
        assert!(!tokens_equal(b"abcdefg", b"abcdefgh"));
        assert!(!tokens_equal(b"abcdefghi", b"abcdefgh"));
        assert!(!tokens_equal(b"", b"abcdefgh"));
    }

    #[cfg(unix)]
    #[test]
    fn files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "  c2VjcmV0LXRva2VuLWZvci10ZXN0cw==\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&f).unwrap(), "c2VjcmV0LXRva2VuLWZvci10ZXN0cw==");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_token(&f).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        std::fs::write(&f, "short").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        let e = read_token(&f).unwrap_err().to_string();
        assert!(e.contains("5 characters"), "{e}");
        let e = read_token(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read it"), "{e}");
    }
}
