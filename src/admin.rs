//! Admin HTTP endpoint (stub).
