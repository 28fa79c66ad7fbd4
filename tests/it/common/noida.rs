//! A noida-db broker process (PyPI `noida-db`, installed by `scripts/setup.sh`) for tests
//! that need a broker in a separate process or what the mock cluster lacks
//! (`offsets_for_times`). `SLUICE_NOIDA_DB` overrides the binary's path. The same broker
//! module runs `sluice bench --broker noida`.

pub use sluice::demo::broker::{terminate, Broker};
