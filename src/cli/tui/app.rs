//! The terminal UI's state and its pure parts: table rows from a status report, the list
//! filter, log search, and the mapping from keys to commands. No terminal or socket here.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kinfra::Action;
use kinfra_core::state::ServiceState;
use kinfra_core::status::{ServiceLogLine, StatusReport};
use std::collections::VecDeque;

/// Most log lines kept for the selected service.
pub(super) const LOG_CAPACITY: usize = 2000;

/// One line of the service table, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceRow {
    /// Service or resource name.
    pub name: String,
    /// `process`, `docker`, ...
    pub kind: String,
    /// Lifecycle state.
    pub state: ServiceState,
    /// `healthy`, `unhealthy`, `unknown`.
    pub health: String,
    /// CPU in percent of one core, or `-`.
    pub cpu: String,
    /// Resident memory, or `-`.
    pub memory: String,
    /// Restarts since kinfra started managing it.
    pub restarts: String,
    /// Port, or `-`.
    pub port: String,
    /// PID, or `-`.
    pub pid: String,
    /// Scale to zero (`sleeps in 4m 10s`, `asleep`), when the report has any sleeper.
    pub sleep: Option<String>,
    /// The progress of long work under way, else the status message.
    pub message: String,
}

/// The table rows of `report` whose name, kind or state contains `filter` (ignoring ASCII
/// case), by name. A SLEEP cell only when some service has `scale_to_zero`.
pub(super) fn rows(report: &StatusReport, filter: &str) -> Vec<ServiceRow> {
    let sleeps = report.services.values().any(|s| s.sleep.is_some());
    let filter = filter.to_ascii_lowercase();
    report
        .services
        .iter()
        .filter(|(name, s)| {
            filter.is_empty()
                || [name.as_str(), s.kind.as_str(), s.state.as_str()]
                    .iter()
                    .any(|field| field.to_ascii_lowercase().contains(&filter))
        })
        .map(|(name, s)| ServiceRow {
            name: name.clone(),
            kind: s.kind.clone(),
            state: s.state,
            health: s.health.as_str().to_owned(),
            cpu: s
                .cpu_percent
                .map_or_else(|| "-".into(), |c| format!("{c:.1}%")),
            memory: s.memory_bytes.map_or_else(|| "-".into(), human_bytes),
            restarts: s.restarts.to_string(),
            port: s.port.map_or_else(|| "-".into(), |p| p.to_string()),
            pid: s.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            sleep: sleeps.then(|| crate::cli::output::sleep_cell(s)),
            // Long work under way (an image pull, a cloud operation) says more than the
            // status message.
            message: s
                .progress
                .as_ref()
                .map_or_else(|| s.status_message.clone(), |p| p.text()),
        })
        .collect()
}

/// `512 B`, `3.4 KiB`, `12.0 MiB`, `1.2 GiB`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Byte ranges of every non-overlapping occurrence of `query` in `text`, ignoring ASCII case
/// (so the ranges are valid for `text` itself). None for an empty query.
pub(super) fn match_ranges(text: &str, query: &str) -> Vec<(usize, usize)> {
    if query.is_empty() {
        return Vec::new();
    }
    let haystack = text.to_ascii_lowercase();
    let needle = query.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = haystack.get(from..).and_then(|rest| rest.find(&needle)) {
        let start = from + at;
        let end = start + needle.len();
        out.push((start, end));
        from = end;
    }
    out
}

/// What the user is typing into, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Keys are commands.
    Normal,
    /// Keys edit the list filter (`f`).
    Filter,
    /// Keys edit the log search (`/`).
    Search,
    /// The help screen is shown; any key closes it.
    Help,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Command {
    /// Leave the TUI.
    Quit,
    /// Select the previous row.
    Up,
    /// Select the next row.
    Down,
    /// Send an action for the selected row.
    Act(Action),
    /// Maintenance on, or off when the selected row is in maintenance.
    ToggleMaintenance,
    /// Start typing a list filter.
    BeginFilter,
    /// Start typing a log search.
    BeginSearch,
    /// Jump to the next (newer) match, wrapping.
    NextMatch,
    /// Jump to the previous (older) match, wrapping.
    PrevMatch,
    /// Clear the search and the filter; the log pane follows the tail again.
    Clear,
    /// Show the help screen.
    Help,
    /// Close the help screen.
    CloseHelp,
    /// A character typed into the filter or the search.
    Input(char),
    /// Delete the last typed character.
    Backspace,
    /// Keep what was typed.
    Submit,
    /// Drop what was typed.
    Cancel,
    /// Nothing.
    Ignore,
}

/// The command `key` means in `mode`.
pub(super) fn command_for(mode: Mode, key: KeyEvent) -> Command {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Command::Quit;
    }
    match mode {
        Mode::Help => Command::CloseHelp,
        Mode::Filter | Mode::Search => match key.code {
            KeyCode::Enter => Command::Submit,
            KeyCode::Esc => Command::Cancel,
            KeyCode::Backspace => Command::Backspace,
            KeyCode::Char(c) if !ctrl => Command::Input(c),
            _ => Command::Ignore,
        },
        // Alt-x is not x (and a quick Esc then x arrives as Alt-x): not a command.
        Mode::Normal if key.modifiers.contains(KeyModifiers::ALT) => Command::Ignore,
        Mode::Normal => match key.code {
            KeyCode::Char('q') => Command::Quit,
            KeyCode::Up | KeyCode::Char('k') => Command::Up,
            KeyCode::Down | KeyCode::Char('j') => Command::Down,
            KeyCode::Char('r') => Command::Act(Action::Restart),
            KeyCode::Char('s') => Command::Act(Action::Stop),
            KeyCode::Char('S') => Command::Act(Action::Start),
            KeyCode::Char('m') => Command::ToggleMaintenance,
            KeyCode::Char('f') => Command::BeginFilter,
            KeyCode::Char('/') => Command::BeginSearch,
            KeyCode::Char('n') => Command::NextMatch,
            KeyCode::Char('N') => Command::PrevMatch,
            KeyCode::Char('?') => Command::Help,
            KeyCode::Esc => Command::Clear,
            _ => Command::Ignore,
        },
    }
}

/// The last thing worth telling the user, at the bottom of the screen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Notice {
    /// The text.
    pub text: String,
    /// Whether it reports a failure.
    pub error: bool,
}

/// What the TUI holds between frames.
#[derive(Debug)]
pub(super) struct App {
    /// The latest status report.
    pub report: Option<StatusReport>,
    /// The selected service's name.
    pub selected: Option<String>,
    /// The list filter.
    pub filter: String,
    /// The committed log search.
    pub search: String,
    /// What keys go to.
    pub mode: Mode,
    /// The filter or search being typed (copied into `filter`/`search` live).
    pub input: String,
    /// The selected service's log lines, oldest first.
    pub logs: VecDeque<ServiceLogLine>,
    /// How many lines were dropped from the front of `logs` since the subscription began.
    pub logs_dropped: u64,
    /// The search match shown (an absolute line number: `logs_dropped` + index); `None`
    /// follows the tail.
    pub current_match: Option<u64>,
    /// The bottom line.
    pub notice: Notice,
}

impl App {
    /// An empty TUI before the first report.
    pub fn new() -> Self {
        Self {
            report: None,
            selected: None,
            filter: String::new(),
            search: String::new(),
            mode: Mode::Normal,
            input: String::new(),
            logs: VecDeque::new(),
            logs_dropped: 0,
            current_match: None,
            notice: Notice {
                text: "? help · q quit".into(),
                error: false,
            },
        }
    }

    /// The rows shown now.
    pub fn rows(&self) -> Vec<ServiceRow> {
        self.report
            .as_ref()
            .map(|r| rows(r, &self.filter))
            .unwrap_or_default()
    }

    /// Takes a new report; keeps the selection when its row is still shown, else selects
    /// the first row.
    pub fn set_report(&mut self, report: StatusReport) {
        self.report = Some(report);
        self.fix_selection();
    }

    fn fix_selection(&mut self) {
        let rows = self.rows();
        let shown = self
            .selected
            .as_ref()
            .is_some_and(|name| rows.iter().any(|r| &r.name == name));
        if !shown {
            self.selected = rows.first().map(|r| r.name.clone());
        }
    }

    /// Index of the selected row among the rows shown.
    pub fn selected_index(&self, rows: &[ServiceRow]) -> Option<usize> {
        let name = self.selected.as_ref()?;
        rows.iter().position(|r| &r.name == name)
    }

    /// Moves the selection by `delta` rows (clamped).
    pub fn move_selection(&mut self, delta: isize) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let at = self.selected_index(&rows).unwrap_or(0);
        let next = at.saturating_add_signed(delta).min(rows.len() - 1);
        self.selected = Some(rows[next].name.clone());
    }

    /// The selected service's state, when shown.
    pub fn selected_state(&self) -> Option<ServiceState> {
        let name = self.selected.as_ref()?;
        self.report.as_ref()?.services.get(name).map(|s| s.state)
    }

    /// Forgets the log lines (a new subscription begins).
    pub fn reset_logs(&mut self) {
        self.logs.clear();
        self.logs_dropped = 0;
        self.current_match = None;
    }

    /// Appends a log line, dropping the oldest beyond [`LOG_CAPACITY`].
    pub fn push_log(&mut self, line: ServiceLogLine) {
        self.logs.push_back(line);
        while self.logs.len() > LOG_CAPACITY {
            self.logs.pop_front();
            self.logs_dropped += 1;
        }
        // A shown match that scrolled out of the buffer is gone: follow the tail again.
        if self.current_match.is_some_and(|m| m < self.logs_dropped) {
            self.current_match = None;
        }
    }

    /// Absolute numbers of the log lines matching the search, oldest first.
    pub fn matches(&self) -> Vec<u64> {
        if self.search.is_empty() {
            return Vec::new();
        }
        self.logs
            .iter()
            .enumerate()
            .filter(|(_, l)| !match_ranges(&l.line.message, &self.search).is_empty())
            .map(|(i, _)| self.logs_dropped + i as u64)
            .collect()
    }

    /// Moves to the next (`forward`) or previous match, wrapping; from no match, `forward`
    /// starts at the oldest and backward at the newest.
    pub fn jump(&mut self, forward: bool) {
        let matches = self.matches();
        if matches.is_empty() {
            self.current_match = None;
            return;
        }
        let next = match self.current_match {
            None if forward => matches.first(),
            None => matches.last(),
            Some(at) if forward => matches
                .iter()
                .find(|m| **m > at)
                .or_else(|| matches.first()),
            Some(at) => matches
                .iter()
                .rev()
                .find(|m| **m < at)
                .or_else(|| matches.last()),
        };
        self.current_match = next.copied();
    }

    /// `/query: 3 of 12` (or `no match`), for the log pane's title.
    pub fn search_summary(&self) -> Option<String> {
        if self.search.is_empty() {
            return None;
        }
        let matches = self.matches();
        if matches.is_empty() {
            return Some(format!("/{}: no match", self.search));
        }
        let position = self
            .current_match
            .and_then(|m| matches.iter().position(|x| *x == m))
            .map(|i| format!("{} of ", i + 1))
            .unwrap_or_default();
        Some(format!(
            "/{}: {position}{} matches",
            self.search,
            matches.len()
        ))
    }

    /// Carries out the commands that only change what is shown. Returns the action to send
    /// for the selected service, if the command asks for one.
    pub fn apply(&mut self, command: Command) -> Option<(Action, String)> {
        match command {
            Command::Quit | Command::Ignore => {}
            Command::Up => self.move_selection(-1),
            Command::Down => self.move_selection(1),
            Command::Act(action) => {
                return self.target(action);
            }
            Command::ToggleMaintenance => {
                let action = if self.selected_state() == Some(ServiceState::Maintenance) {
                    Action::MaintenanceOff
                } else {
                    Action::MaintenanceOn
                };
                return self.target(action);
            }
            Command::BeginFilter => {
                self.mode = Mode::Filter;
                self.input = self.filter.clone();
            }
            Command::BeginSearch => {
                self.mode = Mode::Search;
                self.input = self.search.clone();
            }
            Command::NextMatch => self.jump(true),
            Command::PrevMatch => self.jump(false),
            Command::Clear => {
                self.search.clear();
                self.filter.clear();
                self.current_match = None;
                self.fix_selection();
            }
            Command::Help => self.mode = Mode::Help,
            Command::CloseHelp => self.mode = Mode::Normal,
            Command::Input(c) => {
                self.input.push(c);
                self.live_input();
            }
            Command::Backspace => {
                self.input.pop();
                self.live_input();
            }
            Command::Submit => {
                if self.mode == Mode::Search {
                    // Show the newest match, like a search from the tail.
                    self.current_match = None;
                    self.jump(false);
                }
                self.mode = Mode::Normal;
            }
            Command::Cancel => {
                self.input.clear();
                self.live_input();
                self.mode = Mode::Normal;
            }
        }
        None
    }

    /// The filter and the search follow what is typed, as it is typed.
    fn live_input(&mut self) {
        match self.mode {
            Mode::Filter => {
                self.filter = self.input.clone();
                self.fix_selection();
            }
            Mode::Search => {
                self.search = self.input.clone();
                self.current_match = None;
            }
            Mode::Normal | Mode::Help => {}
        }
    }

    fn target(&mut self, action: Action) -> Option<(Action, String)> {
        match &self.selected {
            Some(name) => Some((action, name.clone())),
            None => {
                self.notice = Notice {
                    text: "nothing selected".into(),
                    error: true,
                };
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEventKind;
    use kinfra_core::status::{LogLine, LogStream, ServiceStatus, SleepStatus, Stats};

    /// Built from JSON, as the runtime sends it, so fields added later (with defaults) need
    /// no change here.
    fn service(state: ServiceState, pid: Option<u32>) -> ServiceStatus {
        let json = serde_json::json!({
            "kind": "process",
            "state": state.as_str(),
            "health": "healthy",
            "status_message": "Running",
            "port": 8080,
            "pid": pid,
            "uptime_s": null,
            "uptime": null,
            "restarts": 2,
            "last_exit": null,
            "logs": [],
            "cpu_percent": 1.5,
            "memory_bytes": 12 * 1024 * 1024,
        });
        match serde_json::from_value(json) {
            Ok(status) => status,
            Err(error) => panic!("a ServiceStatus from JSON: {error}"),
        }
    }

    fn report(services: Vec<(&str, ServiceStatus)>) -> StatusReport {
        StatusReport {
            project: "it".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            stats: Stats::default(),
            services: services
                .into_iter()
                .map(|(n, s)| (n.to_owned(), s))
                .collect(),
            bus: None,
            store: None,
            routes: Vec::new(),
            certificates: Vec::new(),
            pending_restart: Vec::new(),
            providers: Default::default(),
            tunnel: None,
            build: None,
            node: None,
            fleet: None,
        }
    }

    fn line(message: &str) -> ServiceLogLine {
        ServiceLogLine {
            service: "web".into(),
            line: LogLine {
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                level: "info".into(),
                stream: LogStream::Stdout,
                message: message.into(),
            },
        }
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent {
            code,
            modifiers: KeyModifiers::NONE,
            kind: KeyEventKind::Press,
            state: crossterm::event::KeyEventState::NONE,
        }
    }

    #[test]
    fn rows_show_every_column_and_sleep_only_when_someone_sleeps() {
        let r = report(vec![
            ("worker", service(ServiceState::Stopped, None)),
            ("api", service(ServiceState::Running, Some(42))),
        ]);
        let shown = rows(&r, "");
        assert_eq!(shown.len(), 2);
        assert_eq!(shown[0].name, "api", "sorted by name");
        assert_eq!(shown[0].pid, "42");
        assert_eq!(shown[0].port, "8080");
        assert_eq!(shown[0].cpu, "1.5%");
        assert_eq!(shown[0].memory, "12.0 MiB");
        assert_eq!(shown[0].restarts, "2");
        assert_eq!(shown[0].health, "healthy");
        assert_eq!(shown[1].pid, "-");
        assert_eq!(shown[0].sleep, None);

        let mut sleepy = service(ServiceState::Sleeping, None);
        sleepy.sleep = Some(SleepStatus {
            idle_after_s: 60,
            wake_timeout_s: 30,
            wake: "request".into(),
            open: 0,
            idle_s: 0,
            sleeps_at: None,
            sleeps_in_s: None,
            kept_awake_by: None,
            wakes: 1,
        });
        let r = report(vec![
            ("api", service(ServiceState::Running, Some(1))),
            ("db", sleepy),
        ]);
        let sleepy_rows = rows(&r, "");
        assert_eq!(sleepy_rows[0].sleep.as_deref(), Some("-"));
        assert_eq!(sleepy_rows[1].sleep.as_deref(), Some("asleep"));
    }

    #[test]
    fn progress_shows_in_the_message_column() {
        let mut pulling = service(ServiceState::Starting, None);
        pulling.progress = Some(kinfra_core::progress::Progress {
            task: "pull".into(),
            phase: "downloading".into(),
            target: Some("postgres:16".into()),
            current: Some(1_000_000),
            total: Some(4_000_000),
            unit: Some("bytes".into()),
            percent: Some(25.0),
            elapsed_s: 3,
        });
        let r = report(vec![
            ("api", service(ServiceState::Running, Some(1))),
            ("db", pulling),
        ]);
        let shown = rows(&r, "");
        assert_eq!(shown[0].message, "Running");
        assert!(
            shown[1]
                .message
                .starts_with("pulling postgres:16 (downloading)  25%"),
            "{}",
            shown[1].message
        );
    }

    #[test]
    fn filter_matches_name_kind_or_state_ignoring_case() {
        let r = report(vec![
            ("api", service(ServiceState::Running, Some(1))),
            ("worker", service(ServiceState::Failed, None)),
        ]);
        let names = |f: &str| -> Vec<String> { rows(&r, f).into_iter().map(|r| r.name).collect() };
        assert_eq!(names("WORK"), ["worker"]);
        assert_eq!(names("failed"), ["worker"]);
        assert_eq!(names("process"), ["api", "worker"]);
        assert!(names("nothing").is_empty());
    }

    #[test]
    fn search_finds_every_occurrence_ignoring_case() {
        assert_eq!(
            match_ranges("Tick tick TICK", "tick"),
            [(0, 4), (5, 9), (10, 14)]
        );
        assert_eq!(match_ranges("aaaa", "aa"), [(0, 2), (2, 4)]);
        assert!(match_ranges("hello", "").is_empty());
        assert!(match_ranges("hello", "x").is_empty());
        // Byte ranges stay valid around multi-byte characters.
        let text = "é tick ü";
        let ranges = match_ranges(text, "TICK");
        assert_eq!(ranges.len(), 1);
        assert_eq!(&text[ranges[0].0..ranges[0].1], "tick");
    }

    #[test]
    fn keys_map_to_commands_by_mode() {
        use Command as C;
        let n = Mode::Normal;
        assert_eq!(command_for(n, key(KeyCode::Char('q'))), C::Quit);
        assert_eq!(command_for(n, key(KeyCode::Char('j'))), C::Down);
        assert_eq!(command_for(n, key(KeyCode::Down)), C::Down);
        assert_eq!(command_for(n, key(KeyCode::Char('k'))), C::Up);
        assert_eq!(command_for(n, key(KeyCode::Up)), C::Up);
        assert_eq!(
            command_for(n, key(KeyCode::Char('r'))),
            C::Act(Action::Restart)
        );
        assert_eq!(
            command_for(n, key(KeyCode::Char('s'))),
            C::Act(Action::Stop)
        );
        assert_eq!(
            command_for(n, key(KeyCode::Char('S'))),
            C::Act(Action::Start)
        );
        assert_eq!(
            command_for(n, key(KeyCode::Char('m'))),
            C::ToggleMaintenance
        );
        assert_eq!(command_for(n, key(KeyCode::Char('f'))), C::BeginFilter);
        assert_eq!(command_for(n, key(KeyCode::Char('/'))), C::BeginSearch);
        assert_eq!(command_for(n, key(KeyCode::Char('n'))), C::NextMatch);
        assert_eq!(command_for(n, key(KeyCode::Char('N'))), C::PrevMatch);
        assert_eq!(command_for(n, key(KeyCode::Char('?'))), C::Help);
        // While typing, letters are text, not commands.
        for mode in [Mode::Filter, Mode::Search] {
            assert_eq!(command_for(mode, key(KeyCode::Char('q'))), C::Input('q'));
            assert_eq!(command_for(mode, key(KeyCode::Char('r'))), C::Input('r'));
            assert_eq!(command_for(mode, key(KeyCode::Enter)), C::Submit);
            assert_eq!(command_for(mode, key(KeyCode::Esc)), C::Cancel);
            assert_eq!(command_for(mode, key(KeyCode::Backspace)), C::Backspace);
        }
        assert_eq!(
            command_for(Mode::Help, key(KeyCode::Char('r'))),
            C::CloseHelp
        );
        let alt_r = KeyEvent {
            modifiers: KeyModifiers::ALT,
            ..key(KeyCode::Char('r'))
        };
        assert_eq!(command_for(n, alt_r), C::Ignore);
        let ctrl_c = KeyEvent {
            modifiers: KeyModifiers::CONTROL,
            ..key(KeyCode::Char('c'))
        };
        for mode in [Mode::Normal, Mode::Filter, Mode::Search, Mode::Help] {
            assert_eq!(command_for(mode, ctrl_c), C::Quit);
        }
    }

    #[test]
    fn actions_target_the_selection_and_maintenance_toggles() {
        let mut app = App::new();
        assert_eq!(app.apply(Command::Act(Action::Restart)), None);
        assert!(app.notice.error);
        app.set_report(report(vec![
            ("api", service(ServiceState::Running, Some(1))),
            ("web", service(ServiceState::Maintenance, Some(2))),
        ]));
        assert_eq!(app.selected.as_deref(), Some("api"));
        assert_eq!(
            app.apply(Command::ToggleMaintenance),
            Some((Action::MaintenanceOn, "api".into()))
        );
        app.apply(Command::Down);
        app.apply(Command::Down);
        assert_eq!(app.selected.as_deref(), Some("web"), "clamped at the end");
        assert_eq!(
            app.apply(Command::ToggleMaintenance),
            Some((Action::MaintenanceOff, "web".into()))
        );
        assert_eq!(
            app.apply(Command::Act(Action::Restart)),
            Some((Action::Restart, "web".into()))
        );
        // A filter that hides the selection moves it to the first row shown.
        app.apply(Command::BeginFilter);
        app.apply(Command::Input('a'));
        app.apply(Command::Input('p'));
        assert_eq!(app.filter, "ap");
        assert_eq!(app.selected.as_deref(), Some("api"));
        app.apply(Command::Submit);
        assert_eq!(app.mode, Mode::Normal);
        app.apply(Command::Clear);
        assert_eq!(app.rows().len(), 2);
    }

    #[test]
    fn search_jumps_between_matches_and_wraps() {
        let mut app = App::new();
        for m in ["one tick", "other", "two TICK", "three tick"] {
            app.push_log(line(m));
        }
        app.apply(Command::BeginSearch);
        for c in "tick".chars() {
            app.apply(Command::Input(c));
        }
        app.apply(Command::Submit);
        assert_eq!(app.matches(), [0, 2, 3]);
        assert_eq!(app.current_match, Some(3), "Enter shows the newest match");
        assert_eq!(
            app.search_summary().as_deref(),
            Some("/tick: 3 of 3 matches")
        );
        app.apply(Command::NextMatch);
        assert_eq!(app.current_match, Some(0), "wraps to the oldest");
        app.apply(Command::NextMatch);
        assert_eq!(app.current_match, Some(2));
        app.apply(Command::PrevMatch);
        assert_eq!(app.current_match, Some(0));
        app.apply(Command::Clear);
        assert_eq!(app.current_match, None);
        assert_eq!(app.search_summary(), None);
    }

    #[test]
    fn the_log_buffer_is_bounded() {
        let mut app = App::new();
        for i in 0..LOG_CAPACITY + 5 {
            app.push_log(line(&format!("line {i}")));
        }
        assert_eq!(app.logs.len(), LOG_CAPACITY);
        assert_eq!(app.logs_dropped, 5);
        assert_eq!(
            app.logs.front().map(|l| l.line.message.as_str()),
            Some("line 5")
        );
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
