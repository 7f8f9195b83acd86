//! Drawing one frame of the terminal UI from its [`App`] state: the header, the service
//! table, the selected service's log pane, the status line and the help screen.

use super::app::{App, Mode, ServiceRow, match_ranges};
use kinfra_core::state::ServiceState;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap};

/// The style of a search match; the match being shown is also bold and underlined.
pub(super) const MATCH_STYLE: Style = Style::new().fg(Color::Black).bg(Color::Yellow);

/// The help screen's text: keys, and who may use the TUI.
pub(super) const HELP: &[&str] = &[
    "kinfra runtime tui: the running runtime's services and resources, and their logs",
    "",
    "  up / k, down / j   select a service or resource",
    "  r                  restart the selected one",
    "  s                  stop it (it stays stopped)",
    "  S                  start it",
    "  m                  maintenance on / off (the proxy serves the maintenance page)",
    "  f                  filter the list by name, kind or state (Enter keeps, Esc clears)",
    "  /                  search the log pane (Enter shows the newest match)",
    "  n / N              next / previous match (wraps)",
    "  Esc                clear the search and the filter; the log pane follows again",
    "  ?                  this help",
    "  q, Ctrl-C          quit",
    "",
    "Access: the TUI speaks only to the runtime's control socket (<state dir>/control.sock,",
    "mode 0600). Whoever can open it is the user who started the runtime, who can also read",
    "the dashboard token file: the same authority as the dashboard token. The TUI opens no",
    "network listener and never reads or shows the token.",
    "",
    "The list refreshes every second. When the runtime stops, the TUI exits with status 1.",
    "",
    "Any key closes this help.",
];

/// Draws the whole screen.
pub(super) fn frame(f: &mut Frame, app: &App) {
    let rows = app.rows();
    let area = f.area();
    // The table takes what its rows need (header and borders included), up to half the
    // screen; the log pane the rest.
    let wanted = u16::try_from(rows.len())
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [header, table, logs, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(wanted.clamp(4, (area.height / 2).max(4))),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(header_line(app)), header);
    service_table(f, app, &rows, table);
    log_pane(f, app, logs);
    f.render_widget(Paragraph::new(status_line(app)), status);
    if app.mode == Mode::Help {
        help(f, area);
    }
}

fn header_line(app: &App) -> Line<'static> {
    let Some(report) = &app.report else {
        return Line::from("kinfra: waiting for the runtime's status ...");
    };
    let s = &report.stats;
    let mut spans = vec![
        Span::styled(
            format!("kinfra · {}", report.project),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(
            " · {} total, {} running, {} starting, {} errors",
            s.total, s.running, s.starting, s.error
        )),
    ];
    if !app.filter.is_empty() {
        spans.push(Span::styled(
            format!(" · filter: {}", app.filter),
            Style::new().fg(Color::Cyan),
        ));
    }
    Line::from(spans)
}

fn state_color(state: ServiceState) -> Color {
    match state {
        ServiceState::Running | ServiceState::Completed => Color::Green,
        ServiceState::Failed | ServiceState::Backoff => Color::Red,
        ServiceState::Maintenance | ServiceState::Sleeping => Color::Blue,
        ServiceState::Pending
        | ServiceState::Starting
        | ServiceState::Stopping
        | ServiceState::Stopped => Color::Yellow,
    }
}

fn service_table(f: &mut Frame, app: &App, rows: &[ServiceRow], area: Rect) {
    let sleeps = rows.iter().any(|r| r.sleep.is_some());
    let mut header = vec![
        "NAME", "KIND", "STATE", "HEALTH", "CPU", "MEMORY", "RESTARTS", "PORT", "PID",
    ];
    if sleeps {
        header.push("SLEEP");
    }
    // Each column as wide as its widest cell (header included); the message takes the rest.
    let mut widths: Vec<Constraint> = header
        .iter()
        .enumerate()
        .map(|(i, title)| {
            let widest = rows
                .iter()
                .map(|r| column(r, i).chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0);
            Constraint::Length(u16::try_from(widest.min(40)).unwrap_or(40))
        })
        .collect();
    header.push("MESSAGE");
    widths.push(Constraint::Fill(1));
    let body = rows.iter().map(|r| {
        let mut cells = vec![
            Cell::from(r.name.clone()),
            Cell::from(r.kind.clone()),
            Cell::from(Span::styled(
                r.state.as_str(),
                Style::new().fg(state_color(r.state)),
            )),
            Cell::from(r.health.clone()),
            Cell::from(r.cpu.clone()),
            Cell::from(r.memory.clone()),
            Cell::from(r.restarts.clone()),
            Cell::from(r.port.clone()),
            Cell::from(r.pid.clone()),
        ];
        if let Some(sleep) = &r.sleep {
            cells.push(Cell::from(sleep.clone()));
        }
        cells.push(Cell::from(r.message.clone()));
        Row::new(cells)
    });
    let title = match &app.report {
        Some(_) if rows.is_empty() && !app.filter.is_empty() => {
            format!(" services: none match `{}` ", app.filter)
        }
        _ => " services ".into(),
    };
    let table = Table::new(body, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(app.selected_index(rows));
    f.render_stateful_widget(table, area, &mut state);
}

/// The text of column `i` of a row (MESSAGE excluded), for sizing the columns.
fn column(r: &ServiceRow, i: usize) -> &str {
    match i {
        0 => &r.name,
        1 => &r.kind,
        2 => r.state.as_str(),
        3 => &r.health,
        4 => &r.cpu,
        5 => &r.memory,
        6 => &r.restarts,
        7 => &r.port,
        8 => &r.pid,
        _ => r.sleep.as_deref().unwrap_or(""),
    }
}

fn log_pane(f: &mut Frame, app: &App, area: Rect) {
    let mut title = match &app.selected {
        Some(name) => format!(" logs: {name} "),
        None => " logs ".into(),
    };
    if let Some(summary) = app.search_summary() {
        title.push_str(&format!("· {summary} "));
    }
    if app.current_match.is_none() {
        title.push_str("· following ");
    }
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    let height = usize::from(inner.height);
    // The window of lines shown: the tail, or around the match being shown.
    let len = app.logs.len();
    let end = match app.current_match {
        Some(m) => {
            let at = usize::try_from(m.saturating_sub(app.logs_dropped)).unwrap_or(len);
            (at + height / 2 + 1).clamp(height.min(len), len)
        }
        None => len,
    };
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = app
        .logs
        .range(start..end)
        .enumerate()
        .map(|(i, l)| {
            let absolute = app.logs_dropped + (start + i) as u64;
            log_line(
                &l.line.timestamp,
                &l.line.level,
                &l.line.message,
                &app.search,
                app.current_match == Some(absolute),
            )
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// One log line: time, then the message with the search's matches highlighted.
pub(super) fn log_line(
    timestamp: &str,
    level: &str,
    message: &str,
    search: &str,
    current: bool,
) -> Line<'static> {
    let time = timestamp.get(11..19).unwrap_or(timestamp);
    let text_style = match level {
        "error" => Style::new().fg(Color::Red),
        "warn" => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    };
    let mut spans = vec![Span::styled(
        format!("{time} "),
        Style::new().fg(Color::DarkGray),
    )];
    let mut from = 0;
    let match_style = if current {
        MATCH_STYLE.add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    } else {
        MATCH_STYLE
    };
    for (start, end) in match_ranges(message, search) {
        if start > from {
            spans.push(Span::styled(message[from..start].to_owned(), text_style));
        }
        spans.push(Span::styled(message[start..end].to_owned(), match_style));
        from = end;
    }
    if from < message.len() {
        spans.push(Span::styled(message[from..].to_owned(), text_style));
    }
    let line = Line::from(spans);
    if current {
        line.style(Style::new().add_modifier(Modifier::BOLD))
    } else {
        line
    }
}

fn status_line(app: &App) -> Line<'static> {
    match app.mode {
        Mode::Filter => Line::from(format!("filter: {}▏ (Enter keeps, Esc clears)", app.input)),
        Mode::Search => Line::from(format!("/{}▏ (Enter searches, Esc clears)", app.input)),
        Mode::Normal | Mode::Help => {
            let style = if app.notice.error {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Line::from(Span::styled(app.notice.text.clone(), style))
        }
    }
}

fn help(f: &mut Frame, area: Rect) {
    let width = area.width.saturating_sub(4).min(96);
    let height = u16::try_from(HELP.len() + 2)
        .unwrap_or(u16::MAX)
        .min(area.height);
    let popup = Rect {
        x: area.x + (area.width.saturating_sub(width)) / 2,
        y: area.y + (area.height.saturating_sub(height)) / 2,
        width,
        height,
    };
    let text: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" help ")),
        popup,
    );
}
