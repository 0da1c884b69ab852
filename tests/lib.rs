//! End-to-end tests live in `tests/tests/`; shared helpers here.
