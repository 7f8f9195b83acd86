//! kinfra
