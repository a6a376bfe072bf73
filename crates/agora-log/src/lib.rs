//! Log and witness services.
