//! Embedding examples for the `coderclaw` crate: `embed.rs` (the policy-aware path)
//! and `embed_raw.rs` (the sandbox alone, skipping policy).
