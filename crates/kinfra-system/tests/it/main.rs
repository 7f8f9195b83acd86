//! kinfra-system's tests: one binary.

mod mock_systemd;
mod systemd;
