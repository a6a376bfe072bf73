//! HTTP for Agora. Only this crate knows HTTP and OpenAI JSON (DESIGN.md invariant).

pub mod tlog;
