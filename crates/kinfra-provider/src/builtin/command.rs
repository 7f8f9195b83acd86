//! The `command` provider: CLI tools as resources (start, stop, status and health commands).
