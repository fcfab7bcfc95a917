//! Embedding examples for `coderclaw-host`; see `embed.rs`.
