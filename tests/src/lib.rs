//! Integration tests that cross crates; see the `tests/` folder.
