//! Agora identity and statements.
