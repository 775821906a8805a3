//! The backend suite (`conflict_tests::suite`) on the embedded in-memory store: the runtime
//! cases on `Runtime::in_memory()`, the store cases on a `MemoryStore` through the
//! `EntityStore` trait. Tests are named `memory::<case>`.

conflict_tests::backend_suite!(memory, conflict_tests::suite::Memory);
