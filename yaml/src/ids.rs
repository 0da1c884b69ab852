//! Namespace identifiers (NGUID, UUID) and serial numbers: parsed when declared, derived stably
//! when not, so every target that serves a layout presents the same identifiers (Linux native
//! multipath matches paths by them).

use uuid::Uuid;

/// Name-space UUID for Tessera's name-based (RFC 4122 version 5) UUIDs. Generated once at
/// random; changing it changes every derived identifier, so it never changes.
const TESSERA_UUID_NAMESPACE: Uuid = Uuid::from_u128(0x3fc7_22f8_ab30_47f9_9d45_688a_b400_60c2);

/// Identify Controller SN is 20 bytes (NVMe Base 2.0 Figure 275, bytes 23:04).
pub const SERIAL_BYTES_MAX: usize = 20;
/// Identify Controller MN is 40 bytes (NVMe Base 2.0 Figure 275, bytes 63:24).
pub const MODEL_BYTES_MAX: usize = 40;

/// Prefix of derived serial numbers; the rest is hex of a hash of the NQN.
const SERIAL_PREFIX: &str = "TS";

/// The identifier derived for namespace `nsid` of subsystem `nqn` when the layout declares
/// neither `nguid` nor `uuid`: the version 5 UUID of `"{nqn}/nsid/{nsid}"` under Tessera's
/// name-space UUID. Used as both NGUID and UUID, as the cluster map uses a volume's UUID for
/// both.
#[must_use]
pub fn derived_namespace_id(nqn: &str, nsid: u32) -> [u8; 16] {
    let name = format!("{nqn}/nsid/{nsid}");
    *Uuid::new_v5(&TESSERA_UUID_NAMESPACE, name.as_bytes()).as_bytes()
}

/// The UUID (also NGUID) of cluster volume `name` when the cluster YAML or the create call gives
/// none: the version 5 UUID of `"volume:{name}"` under Tessera's name-space UUID, so the same
/// volume name always presents the same identifiers.
#[must_use]
pub fn derived_volume_uuid(name: &str) -> [u8; 16] {
    let name = format!("volume:{name}");
    *Uuid::new_v5(&TESSERA_UUID_NAMESPACE, name.as_bytes()).as_bytes()
}

/// The serial number derived for subsystem `nqn` when the layout declares none: `TS` followed by
/// 18 upper-case hex digits of the version 5 UUID of `"serial:{nqn}"` (20 characters).
#[must_use]
pub fn derived_serial(nqn: &str) -> String {
    let name = format!("serial:{nqn}");
    let id = Uuid::new_v5(&TESSERA_UUID_NAMESPACE, name.as_bytes());
    let hex = id
        .simple()
        .encode_upper(&mut Uuid::encode_buffer())
        .to_owned();
    let mut serial = String::from(SERIAL_PREFIX);
    serial.extend(hex.chars().take(SERIAL_BYTES_MAX - SERIAL_PREFIX.len()));
    serial
}

/// Whether `text` is a UUID in the hyphenated 8-4-4-4-12 form.
pub(crate) fn is_hyphenated_uuid(text: &str) -> bool {
    parse_uuid(text).is_ok()
}

/// Parses an RFC 4122 UUID in the hyphenated form (`123e4567-e89b-12d3-a456-426614174000`,
/// either case). The error is the message.
pub(crate) fn parse_uuid(text: &str) -> Result<[u8; 16], String> {
    /// 32 hex digits and 4 hyphens.
    const HYPHENATED_LEN: usize = 36;
    let bad = || {
        format!(
            "invalid UUID {text:?} (expected 8-4-4-4-12 hex digits, e.g. 123e4567-e89b-12d3-a456-426614174000)"
        )
    };
    // `Uuid::try_parse` also takes the simple, braced and URN forms; the layout takes one form.
    if text.len() != HYPHENATED_LEN {
        return Err(bad());
    }
    let id = Uuid::try_parse(text).map_err(|_| bad())?;
    if id.is_nil() {
        return Err(format!(
            "nil UUID {text:?} (expected a non-zero UUID: NVMe reads all zeroes as \"no UUID\")"
        ));
    }
    Ok(*id.as_bytes())
}

/// Parses an NGUID: 32 hex digits, either case. The error is the message.
pub(crate) fn parse_nguid(text: &str) -> Result<[u8; 16], String> {
    let bad = || {
        format!(
            "invalid NGUID {text:?} (expected 32 hex digits, e.g. 0123456789abcdef0123456789abcdef)"
        )
    };
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = text.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    if out == [0u8; 16] {
        // NVMe Base 2.0 section 5.1.12.2.1: an all-zero NGUID means "not supported".
        return Err(format!(
            "all-zero NGUID {text:?} (expected a non-zero NGUID: NVMe reads all zeroes as \"no NGUID\")"
        ));
    }
    Ok(out)
}

/// Formats 16 bytes as 32 lower-case hex digits (how NGUIDs are shown).
#[must_use]
pub fn hex16(bytes: &[u8; 16]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats 16 bytes as a hyphenated UUID.
#[must_use]
pub fn uuid_string(bytes: &[u8; 16]) -> String {
    Uuid::from_bytes(*bytes).hyphenated().to_string()
}
