//! Where the daemon's log lines go and how they look.
//!
//! Always to stderr, one event a line. Three cases:
//!
//! * stderr is a terminal: coloured, with timestamps (a person is reading);
//! * stderr is the journal (`JOURNAL_STREAM` names the very file stderr is,
//!   as systemd sets it for `StandardError=journal`): each line starts with
//!   its syslog priority in sd-daemon style (`<3>` error, `<4>` warning,
//!   `<6>` info, `<7>` debug and trace), without colour or timestamp.
//!   journald strips the prefix and files the line under that priority, so
//!   `journalctl -p warning -u hybusd` finds the warnings, and it stamps
//!   each line itself. Plain lines without the prefix would all be filed
//!   at the unit's default priority (info), errors included;
//! * anything else (a file, a pipe): plain lines with timestamps, no colour
//!   codes to garble a log file or a `grep`.

use std::os::fd::AsFd;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Where stderr goes, as far as the log format is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A terminal: colour and timestamps.
    Terminal,
    /// The systemd journal: priority prefixes, no colour, no timestamps.
    Journal,
    /// A file or a pipe: plain lines with timestamps.
    Plain,
}

impl Sink {
    /// What this process's stderr is.
    pub fn of_stderr() -> Sink {
        let stderr = std::io::stderr();
        if journal_stream_is(stderr.as_fd(), std::env::var("JOURNAL_STREAM").ok().as_deref()) {
            Sink::Journal
        } else if std::io::IsTerminal::is_terminal(&stderr) {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }
}

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, `DEVICE:INODE`)
/// names the file `fd` is. systemd's rule: the variable is inherited by
/// children whose stderr may have been redirected since, so it counts only
/// if the device and inode match.
pub fn journal_stream_is(fd: std::os::fd::BorrowedFd<'_>, journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(fd) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The sd-daemon priority prefix of a level (`sd-daemon(3)`: `SD_ERR` is 3).
pub fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        Level::DEBUG | Level::TRACE => "<7>",
    }
}

/// The default line format with the priority prefix in front.
#[derive(Debug)]
struct Journald(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        writer.write_str(priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber: `filter` decides what is logged,
/// [`Sink::of_stderr`] how it looks.
pub fn init(filter: EnvFilter) {
    let base = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match Sink::of_stderr() {
        Sink::Terminal => base.with_ansi(true).init(),
        Sink::Plain => base.with_ansi(false).init(),
        Sink::Journal => {
            let format = tracing_subscriber::fmt::format().with_target(false).without_time();
            base.with_ansi(false).fmt_fields(DefaultFields::new()).event_format(Journald(format)).init()
        }
    }
}
