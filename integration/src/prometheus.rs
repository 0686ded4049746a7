//! Prometheus text read by Prometheus' own Python client
//! (`prometheus_client.parser`, Debian's python3-prometheus-client): every
//! sample as `name{labels} value`, or the parser's error.

use std::{collections::BTreeMap, process::Command};

const SCRIPT: &str = r##"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    print("#", family.name, family.type)
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"##;

/// What the parser made of `text`.
pub struct Parsed {
    /// Family name (without `_total`) → type.
    pub families: BTreeMap<String, String>,
    /// `name{sorted labels}` → value.
    pub samples: BTreeMap<String, f64>,
}

/// Parses `text` with `prometheus_client`; `Err` with its complaint.
pub fn parse(text: &str) -> Result<Parsed, String> {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let mut parsed = Parsed {
        families: BTreeMap::new(),
        samples: BTreeMap::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(family) = line.strip_prefix("# ") {
            let (name, kind) = family.split_once(' ').unwrap_or((family, ""));
            parsed.families.insert(name.to_owned(), kind.to_owned());
        } else if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse() {
                parsed.samples.insert(series.to_owned(), v);
            }
        }
    }
    Ok(parsed)
}
