//! The access log: one line per request, in the layout of every other log
//! line (`log_format`), written straight into the log writer's per-thread
//! buffer. Going through tracing cost each request its dispatch, a field
//! visitor per value, an intermediate `String` and a copy; this writes the
//! same bytes once. `RUST_LOG` still decides: the line is written only when
//! tracing would write an `info` event of target `access`.

use std::{fmt::Display, sync::OnceLock, time::Duration};

use hyper::{Method, StatusCode};

use crate::{appc::PodUuid, log_format, log_writer::BatchWriter};

/// Where lines go once the binary has set up logging; until then (and in
/// tests that install their own subscriber) they go through tracing.
static SINK: OnceLock<BatchWriter> = OnceLock::new();

/// Sends access-log lines to `writer` (the one tracing's subscriber
/// writes to, so that lines stay in one stream). First call wins.
pub fn install(writer: BatchWriter) {
    let _ = SINK.set(writer);
}

/// A request path as the access log shows it: written straight into the
/// line on the request path, displayed by the tracing fallback.
pub trait LogPath: Display {
    fn append_to(&self, out: &mut Vec<u8>);
}

impl LogPath for &str {
    fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

/// One access-log line. `path` must show free of secrets.
pub fn record(
    api: &'static str,
    method: &Method,
    path: &dyn LogPath,
    status: StatusCode,
    latency: Duration,
    pod: Option<PodUuid>,
) {
    record_to(SINK.get(), api, method, path, status, latency, pod);
}

fn record_to(
    sink: Option<&BatchWriter>,
    api: &'static str,
    method: &Method,
    path: &dyn LogPath,
    status: StatusCode,
    latency: Duration,
    pod: Option<PodUuid>,
) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    match sink {
        Some(sink) => sink.append_line(|buf| {
            line(buf, api, method, path, status, latency_us, pod.as_ref());
        }),
        None => {
            tracing::info!(
                target: "access",
                api = %api,
                method = %method,
                path = %path,
                status = status.as_u16(),
                latency_us,
                pod = pod.as_ref().map(tracing::field::display),
            );
        }
    }
}

/// The line tracing would write for the event in `record`'s fallback.
fn line(
    buf: &mut Vec<u8>,
    api: &str,
    method: &Method,
    path: &dyn LogPath,
    status: StatusCode,
    latency_us: u64,
    pod: Option<&PodUuid>,
) {
    buf.extend_from_slice(&log_format::timestamp());
    buf.extend_from_slice(b"  INFO access: api=");
    buf.extend_from_slice(api.as_bytes());
    buf.extend_from_slice(b" method=");
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.extend_from_slice(b" path=");
    path.append_to(buf);
    buf.extend_from_slice(b" status=");
    buf.extend_from_slice(itoa::Buffer::new().format(status.as_u16()).as_bytes());
    buf.extend_from_slice(b" latency_us=");
    buf.extend_from_slice(itoa::Buffer::new().format(latency_us).as_bytes());
    // No pod, no field (as tracing leaves out an empty `Option`).
    if let Some(pod) = pod {
        buf.extend_from_slice(b" pod=");
        buf.extend_from_slice(&pod.canonical());
    }
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_format::capture::Capture;

    /// Everything after the timestamp.
    fn body(line: &[u8]) -> String {
        String::from_utf8(line[27..].to_vec()).unwrap()
    }

    fn subscriber(filter: &str, capture: &Capture) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .event_format(log_format::LineFormat)
            .with_writer(capture.clone())
            .finish()
    }

    /// Lines written through a batch writer into `capture`, by `f`.
    fn through_sink(capture: &Capture, f: impl FnOnce(&BatchWriter)) {
        let (writer, guard) = crate::log_writer::batch_writer(capture.clone());
        f(&writer);
        drop(guard);
    }

    #[test]
    fn the_direct_line_is_the_line_tracing_writes() {
        let pod = PodUuid::parse("6733c088-a507-4694-aabf-edbe4fc5266f").unwrap();
        let path = "/<token>/acMetadata/v1/pod/uuid";
        let latency = Duration::from_micros(1234);
        for (pod, status) in [(Some(pod), StatusCode::OK), (None, StatusCode::FORBIDDEN)] {
            let (traced, direct) = (Capture::default(), Capture::default());
            let call = |sink: Option<&BatchWriter>| {
                record_to(sink, "public", &Method::GET, &path, status, latency, pod);
            };
            tracing::subscriber::with_default(subscriber("info", &traced), || call(None));
            tracing::subscriber::with_default(subscriber("info", &Capture::default()), || {
                through_sink(&direct, |w| call(Some(w)));
            });
            let (traced, direct) = (traced.bytes(), direct.bytes());
            assert_eq!(body(&direct), body(&traced));
            assert!(body(&direct).contains(" path=/<token>/acMetadata/v1/pod/uuid status="));
            assert_eq!(
                (direct[10], direct[26], direct.last()),
                (b'T', b'Z', Some(&b'\n'))
            );
        }
    }

    #[test]
    fn nothing_is_written_when_the_filter_turns_it_off() {
        let direct = Capture::default();
        let others = Capture::default();
        tracing::subscriber::with_default(subscriber("info,access=off", &others), || {
            through_sink(&direct, |w| {
                record_to(
                    Some(w),
                    "public",
                    &Method::GET,
                    &"/x",
                    StatusCode::OK,
                    Duration::ZERO,
                    None,
                );
            });
            tracing::info!(target: "other", "kept");
        });
        assert!(direct.bytes().is_empty());
        let text = String::from_utf8(others.bytes()).unwrap();
        assert!(text.contains("kept"), "{text}");
    }
}
