//! NVMe Qualified Names (NVMe Base Specification 2.0, section 4.5).

/// NVMe Base 2.0 section 4.5: an NQN is at most 223 bytes (the fabrics Connect data reserves
/// 256 bytes, NUL-terminated). The codec's constant: one definition for the wire and the YAML.
pub const NQN_BYTES_MAX: usize = codec::nvme::fabrics::NQN_MAX_LEN;

/// The well-known discovery subsystem NQN (the codec's). Every listener serves it; no declared
/// subsystem may take it.
pub use codec::nvme::fabrics::DISCOVERY_NQN;

/// Prefix of the UUID-based NQN format (NVMe Base 2.0 section 4.5, second format).
const UUID_NQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

/// What an NQN looks like, for messages.
pub const NQN_EXPECTED: &str = "nqn.yyyy-mm.reverse.domain:name, e.g. \
     nqn.2026-11.dev.tessera:disk1, or nqn.2014-08.org.nvmexpress:uuid:<RFC 4122 UUID>";

/// Checks `nqn` against NVMe Base 2.0 section 4.5. The error is the message (without location).
///
/// Accepted: `nqn.` + 4-digit year + `-` + 2-digit month (01-12) + `.` + a reverse domain name
/// (dot-separated labels of ASCII letters, digits and hyphens, no label empty or starting or
/// ending with a hyphen), optionally followed by `:` and a non-empty string without whitespace
/// or control characters; or the UUID form `nqn.2014-08.org.nvmexpress:uuid:` + a hyphenated
/// UUID. At most 223 bytes.
///
/// # Errors
/// A message naming the first rule broken.
pub fn check_nqn(nqn: &str) -> Result<(), String> {
    /// Longest part of an NQN quoted in a message, so one message stays one line.
    const QUOTE_CHARS_MAX: usize = 64;
    let mut shown: String = nqn.chars().take(QUOTE_CHARS_MAX).collect();
    if shown.len() < nqn.len() {
        shown.push_str("...");
    }
    let bad = |why: &str| {
        Err(format!(
            "invalid NQN {shown:?}: {why} (expected {NQN_EXPECTED})"
        ))
    };
    if nqn.len() > NQN_BYTES_MAX {
        return bad(&format!(
            "{} bytes long, more than {NQN_BYTES_MAX}",
            nqn.len()
        ));
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_NQN_PREFIX) {
        return if crate::ids::is_hyphenated_uuid(uuid) {
            Ok(())
        } else {
            bad("the text after \":uuid:\" is not a UUID like 123e4567-e89b-12d3-a456-426614174000")
        };
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return bad("does not start with \"nqn.\"");
    };
    let date_ok = rest.len() >= 8 && {
        let d = rest.as_bytes();
        d[..4].iter().all(u8::is_ascii_digit)
            && d[4] == b'-'
            && d[5..7].iter().all(u8::is_ascii_digit)
            && d[7] == b'.'
    };
    if !date_ok {
        return bad("\"nqn.\" is not followed by a date yyyy-mm and a dot");
    }
    let month = &rest[5..7];
    if !("01"..="12").contains(&month) {
        return bad(&format!("month {month} is not 01 to 12"));
    }
    let rest = &rest[8..];
    let (domain, name) = match rest.split_once(':') {
        Some((d, n)) => (d, Some(n)),
        None => (rest, None),
    };
    if domain.is_empty() {
        return bad("no reverse domain name after the date");
    }
    for label in domain.split('.') {
        let label_ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !label_ok {
            return bad(&format!(
                "reverse domain name {domain:?} has an invalid label {label:?}"
            ));
        }
    }
    if let Some(name) = name {
        if name.is_empty() {
            return bad("nothing after \":\"");
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("contains whitespace or a control character");
        }
    }
    Ok(())
}
