//! The log line: tracing-subscriber's default layout (`TIME LEVEL target:
//! message key=value ...`) written directly, without the styling wrappers
//! its formatter runs for every field even when colours are off. One line
//! per request is logged, so this is on the request path.

use std::{
    cell::Cell,
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

/// The event format installed by the binary.
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_timestamp(&mut writer)?;
        let meta = event.metadata();
        write!(writer, " {:>5} {}:", meta.level(), meta.target())?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

fn write_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    // ASCII digits and separators only.
    writer.write_str(std::str::from_utf8(&timestamp()).map_err(|_| fmt::Error)?)
}

/// The time now as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (UTC, what tracing
/// prints). The part up to the second is formatted once per second per
/// thread.
pub fn timestamp() -> [u8; 27] {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let prefix = SECOND.with(|cell| {
        let (cached, text) = cell.get();
        if cached == secs {
            return text;
        }
        let text = second_prefix(secs);
        cell.set((secs, text));
        text
    });
    let mut out = [b'Z'; 27];
    out[..20].copy_from_slice(&prefix);
    let mut n = now.subsec_micros();
    for digit in out[20..26].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.` for a Unix time (proleptic Gregorian, UTC).
fn second_prefix(secs: u64) -> [u8; 20] {
    // Days to civil date: Howard Hinnant's algorithm.
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let tod = secs % 86_400;
    let mut out = [0u8; 20];
    let mut put = |at: usize, value: u64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, tod / 3600, 2);
    put(14, tod / 60 % 60, 2);
    put(17, tod % 60, 2);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = c;
    }
    out
}

/// Writes ` message` and ` key=value` pairs as they are visited.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// ` name=` before a value (nothing before the message).
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.writer.write_char(' ')?;
        if field.name() != "message" {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| {
                if field.name() == "message" {
                    self.writer.write_str(value)
                } else {
                    // Debug-quoted, as tracing does: control characters in
                    // a value cannot forge a line.
                    write!(self.writer, "{value:?}")
                }
            });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self
                .key(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

/// A writer that keeps what is written, for tests of log lines (as the
/// writer of a subscriber, or of a batch writer).
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Capture {
        /// Everything written so far.
        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::capture::Capture;

    #[test]
    fn lines_look_like_tracings_default() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(super::LineFormat)
            .with_writer(capture.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "access", api = %"public", path = "/a\nb", status = 200u16, "served");
            tracing::warn!(pod = %"p1", "identity refused");
        });
        let text = String::from_utf8(capture.bytes()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("  INFO access: served api=public path=\"/a\\nb\" status=200"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(" WARN ") && lines[1].ends_with(": identity refused pod=p1"),
            "{}",
            lines[1]
        );
        assert!(lines[0].starts_with("20") && lines[0].as_bytes()[10] == b'T');
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let p = |s| String::from_utf8(super::second_prefix(s).to_vec()).unwrap();
        assert_eq!(p(0), "1970-01-01T00:00:00.");
        assert_eq!(p(951_782_400), "2000-02-29T00:00:00.");
        assert_eq!(p(1_795_882_891), "2026-11-28T16:21:31.");
        assert_eq!(p(4_102_444_799), "2099-12-31T23:59:59.");
    }
}
