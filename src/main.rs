//! The `kinfra` command: parses arguments, maps errors to exit codes (0 ok, 1 runtime failure,
//! 2 usage or config error) and runs the chosen command.

mod cli;

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the proxy allocates per request, and glibc's malloc/free
/// showed up as ~15 % of its CPU time (bench/proxy.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Where there is no /bin/sh (a scratch image), this binary is the supervisor's guardian:
    // started as one, it serves and exits here, before anything else.
    kinfra_supervisor::guardian::serve_if_requested();
    // The embedded default config runs demo programs built into this binary through
    // `${KINFRA_BIN}`. Set it before any thread exists (set_var is only sound then).
    if std::env::var_os("KINFRA_BIN").is_none()
        && let Ok(exe) = std::env::current_exe()
    {
        // SAFETY: no other thread has been started yet.
        unsafe { std::env::set_var("KINFRA_BIN", exe) };
    }
    // systemd's NOTIFY_SOCKET/WATCHDOG_* are kinfra's alone: taken out of the environment
    // before any thread exists, so the processes kinfra starts do not inherit them.
    // SAFETY: no other thread has been started yet.
    unsafe { kinfra::sd_notify::take_process_env() };
    cli::main()
}
