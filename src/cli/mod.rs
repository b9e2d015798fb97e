//! Subcommands that are pure CLI work (tables, progress bars, exit codes); the logic they
//! drive lives in the library.

pub(crate) mod check;
pub(crate) mod compact;
pub(crate) mod dlq;
