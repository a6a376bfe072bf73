//! The Agora daemon: roles and their wiring.
