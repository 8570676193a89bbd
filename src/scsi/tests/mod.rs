//! Tests through Target::execute.
