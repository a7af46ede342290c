//! Wiring and shutdown (stub).
