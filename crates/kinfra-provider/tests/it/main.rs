//! kinfra-provider's integration tests: one binary, real processes and sockets.
