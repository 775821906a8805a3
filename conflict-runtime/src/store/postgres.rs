//! PostgreSQL backend (feature `postgres`).
