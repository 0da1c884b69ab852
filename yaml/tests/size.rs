//! Size strings.

use yaml::parse_size;

#[test]
fn accepted_sizes() {
    let cases: &[(&str, u64)] = &[
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("4K", 4096),
        ("4KiB", 4096),
        ("4 KiB", 4096),
        (" 1GiB ", 1 << 30),
        ("1G", 1 << 30),
        ("3M", 3 << 20),
        ("3MiB", 3 << 20),
        ("2T", 2 << 40),
        ("2TiB", 2 << 40),
        ("16777215TiB", 16_777_215 << 40),
        ("18446744073709551615", u64::MAX),
    ];
    for (text, want) in cases {
        assert_eq!(parse_size(text), Ok(*want), "{text:?}");
    }
}

#[test]
fn refused_sizes() {
    let cases: &[(&str, &str)] = &[
        ("", "not a size: \"\""),
        ("GiB", "not a size: \"GiB\""),
        ("-1G", "not a size: \"-1G\""),
        (
            "1.5G",
            "fractional size \"1.5G\" (expected a whole number; use a smaller unit)",
        ),
        ("1GB", "ambiguous unit \"GB\" in \"1GB\""),
        ("1kB", "ambiguous unit \"kB\" in \"1kB\""),
        ("1k", "unknown unit \"k\" in \"1k\""),
        ("1Gi", "unknown unit \"Gi\" in \"1Gi\""),
        ("1 G B", "unknown unit \"G B\" in \"1 G B\""),
        (
            "16777216TiB",
            "size \"16777216TiB\" does not fit in 64 bits (expected at most 16 EiB)",
        ),
        (
            "18446744073709551616",
            "size \"18446744073709551616\" does not fit in 64 bits",
        ),
    ];
    for (text, start) in cases {
        let e = parse_size(text).expect_err(text);
        assert!(e.starts_with(start), "{text:?}: {e}");
    }
}
