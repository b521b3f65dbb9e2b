//! How results reach the terminal: text or JSON, timestamps, durations and
//! tables. Commands build their whole output as a string first, so that a
//! closed pipe (`signet ca entry list | head`) ends the program quietly
//! instead of panicking halfway through a `println!`.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The output format every command accepts with `--output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Writes `text` to stdout. A reader that went away is not an error.
///
/// # Errors
/// Any other write failure.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

/// Writes `text` to stdout for a reader following along (`watch`):
/// `Ok(false)` once the reader has gone away, so the caller can stop.
///
/// # Errors
/// Any other write failure.
pub fn print_live(text: &str) -> anyhow::Result<bool> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// Writes `value` to stdout as pretty-printed JSON and a newline.
///
/// # Errors
/// As [`print`].
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    print(&text)
}

/// A Unix timestamp as RFC 3339 in UTC, e.g. `2025-01-02T03:04:05Z`. Times
/// outside what the calendar code handles fall back to the bare number, so
/// that a hostile certificate cannot make inspection fail.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

/// A duration rounded to what a reader cares about: seconds under an hour,
/// minutes under a day, hours beyond; and at most the two largest units.
/// `3552s` gives `59m 12s`, `3h 0m 40s` gives `3h`, `50h 5m` gives `2days 2h`.
pub fn approx_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let unit = match secs {
        0..3_600 => 1,
        3_600..86_400 => 60,
        _ => 3_600,
    };
    let rounded = Duration::from_secs(secs - secs % unit);
    let full = humantime::format_duration(rounded).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// How far `deadline` is from `now` (both Unix seconds), in words:
/// `expires in 59m 12s`, `expired 3h ago`, or `expires now`.
pub fn time_left(deadline: i64, now: i64) -> String {
    let diff = deadline.saturating_sub(now);
    let span = Duration::from_secs(diff.unsigned_abs());
    match diff {
        0 => "expires now".to_owned(),
        d if d > 0 => format!("expires in {}", approx_duration(span)),
        _ => format!("expired {} ago", approx_duration(span)),
    }
}

/// Left-aligned columns separated by two spaces; the last column is not
/// padded so that lines carry no trailing blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// `label:` padded to a fixed width, then the value; the layout of every
/// key/value block the CLI prints.
pub fn field(out: &mut String, indent: &str, label: &str, value: &str) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "{indent}{:<14}{value}", format!("{label}:"));
}

/// `s` with control characters escaped, for text read from certificates and
/// servers: it must not be able to move the cursor or recolour the terminal.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approx_duration_table() {
        let rows: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1s"),
            (59, "59s"),
            (3_552, "59m 12s"),
            (3_600, "1h"),
            (3 * 3_600 + 40, "3h"),
            (3 * 3_600 + 5 * 60 + 40, "3h 5m"),
            (86_399, "23h 59m"),
            (50 * 3_600 + 5 * 60, "2days 2h"),
            (7 * 86_400, "7days"),
        ];
        for (secs, want) in rows {
            assert_eq!(approx_duration(Duration::from_secs(*secs)), *want, "{secs}");
        }
    }

    #[test]
    fn time_left_table() {
        let now = 1_700_000_000;
        assert_eq!(time_left(now + 3_552, now), "expires in 59m 12s");
        assert_eq!(time_left(now - 3 * 3_600 - 20, now), "expired 3h ago");
        assert_eq!(time_left(now, now), "expires now");
        assert_eq!(
            time_left(i64::MAX, i64::MIN).split(' ').next(),
            Some("expires")
        );
        assert_eq!(
            time_left(i64::MIN, i64::MAX).split(' ').next(),
            Some("expired")
        );
    }

    #[test]
    fn rfc3339_is_utc_and_total() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
    }

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("plain text/ü"), "plain text/ü");
        assert_eq!(printable("a\x1b[31mred\n"), "a\\u{1b}[31mred\\n");
    }

    #[test]
    fn table_aligns_columns_without_trailing_blanks() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
            vec!["bbbb".to_owned(), "v".to_owned(), "y".to_owned()],
        ];
        let got = table(&["ID", "VALUE", "LAST"], &rows);
        let want = "ID    VALUE       LAST\na     long value  x\nbbbb  v           y\n";
        assert_eq!(got, want);
    }
}
