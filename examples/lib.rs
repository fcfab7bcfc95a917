//! Embedding examples for the `coderclaw` crate: `embed.rs` (the policy-aware path),
//! `embed_raw.rs` (the sandbox alone, skipping policy) and `remote.rs` (a client
//! of `coderclaw serve` over HTTP, WebSocket and gRPC, with a network login).
