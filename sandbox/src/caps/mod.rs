//! One module per capability. Each builds its part of the run from the
//! grant (or checks each call against it) and has tests of its denied path
//! in `tests/e2e`.

pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod memory;
pub(crate) mod shell;
pub(crate) mod skills;
pub(crate) mod wasi;
