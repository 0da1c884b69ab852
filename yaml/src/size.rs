//! Byte sizes: `4096`, `"4KiB"`, `"1 GiB"`, `"1G"`.
//!
//! Every unit is binary (powers of 1024): `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`, and `B`
//! for bytes. `KB`, `MB`, ... are refused rather than guessed: storage people read them as
//! powers of 1000 and a namespace off by 7% is a nasty surprise. Fractions are refused too,
//! since sizes must come out as whole blocks.

/// Units, longest spelling first so `KiB` is not read as `K` followed by junk.
const UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
    ("B", 1),
];

/// What a size looks like, for messages.
pub const SIZE_EXPECTED: &str = "a byte count such as 1073741824, or a number with a binary unit \
     such as \"512MiB\" or \"1G\": K/KiB, M/MiB, G/GiB, T/TiB";

/// Parses a size string. The error is the message (without location).
///
/// ```
/// assert_eq!(yaml::parse_size("4KiB"), Ok(4096));
/// assert_eq!(yaml::parse_size("1 G"), Ok(1 << 30));
/// assert!(yaml::parse_size("1GB").is_err());
/// ```
///
/// # Errors
/// A string that is not digits followed by an optional known unit, or that overflows `u64`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, rest) = trimmed.split_at(digits_end);
    let unit = rest.trim_start();
    if digits.is_empty() {
        return Err(format!("not a size: {text:?} (expected {SIZE_EXPECTED})"));
    }
    let multiplier = if unit.is_empty() {
        1
    } else if let Some(&(_, m)) = UNITS.iter().find(|(u, _)| *u == unit) {
        m
    } else if unit.starts_with('.') {
        return Err(format!(
            "fractional size {text:?} (expected a whole number; use a smaller unit)"
        ));
    } else if matches!(unit, "KB" | "kB" | "MB" | "GB" | "TB") {
        return Err(format!(
            "ambiguous unit {unit:?} in {text:?} (expected a binary unit: K/KiB, M/MiB, G/GiB, T/TiB)"
        ));
    } else {
        return Err(format!(
            "unknown unit {unit:?} in {text:?} (expected K/KiB, M/MiB, G/GiB, T/TiB or B)"
        ));
    };
    let overflow = || format!("size {text:?} does not fit in 64 bits (expected at most 16 EiB)");
    let number: u64 = digits.parse().map_err(|_| overflow())?;
    number.checked_mul(multiplier).ok_or_else(overflow)
}
