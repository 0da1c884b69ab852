//! Log output on stderr for a terminal, a file or the journal: one line per event, colours only
//! on a terminal, and a JSON form (one object per line) for log shippers.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: `TIME LEVEL target: message key=value ...` (no timestamp when
    /// stderr goes to the journal, which stamps each line itself).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields.message` and every
    /// other field of the event.
    Json,
    /// Straight to the journal's socket: the message in `MESSAGE`, the level in `PRIORITY`, the
    /// module in `TARGET`, and each field of the event as a journal field of its own
    /// (`F_SUBNQN=...`; `journalctl -o json` shows them). Falls back to `text` on stderr, with
    /// a warning, when there is no journal.
    Journald,
}

/// Installs the process's log subscriber on stderr. `RUST_LOG` filters (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                let filter =
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
            }
            Err(e) => {
                builder.with_ansi(std::io::stderr().is_terminal()).init();
                tracing::warn!(error = %e, "no journal to log to: logging to stderr as text");
            }
        },
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text if journal => builder.without_time().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
