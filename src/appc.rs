//! The appc schema subset the agent validates: UUIDs, AC names and
//! identifiers, annotations, pod and image manifests. Manifests are kept as
//! JSON values so unknown fields are echoed unchanged.

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use serde_json::{Map, Value};

/// Why an appc value was refused. The text is safe to show a client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("{0}")]
    Uuid(String),
    #[error("{0:?} is not a valid AC name")]
    AcName(String),
    #[error("{0:?} is not a valid AC identifier")]
    AcIdentifier(String),
    #[error("{0}")]
    Manifest(String),
}

/// A pod UUID: 16 bytes, displayed lower case with dashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUuid([u8; 16]);

impl PodUuid {
    /// Parses 32 hex digits, ignoring dashes anywhere (appc's rule).
    pub fn parse(s: &str) -> Result<Self, SchemaError> {
        let mut bytes = [0u8; 16];
        let mut n = 0usize;
        for c in s.chars().filter(|c| *c != '-') {
            let v = c
                .to_digit(16)
                .ok_or_else(|| SchemaError::Uuid(format!("invalid character {c:?} in UUID")))?;
            if n >= 32 {
                return Err(SchemaError::Uuid("UUID has more than 32 hex digits".into()));
            }
            bytes[n / 2] |= (v as u8) << if n % 2 == 0 { 4 } else { 0 };
            n += 1;
        }
        if n != 32 {
            return Err(SchemaError::Uuid(format!(
                "UUID needs 32 hex digits, got {n}"
            )));
        }
        if bytes == [0; 16] {
            return Err(SchemaError::Uuid("the all-zero UUID is not valid".into()));
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl PodUuid {
    /// The canonical form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lower
    /// case, as bytes (what `Display` writes), built without the formatting
    /// machinery (it is in every access-log line).
    pub fn canonical(&self) -> [u8; 36] {
        let mut out = [b'-'; 36];
        for (bytes, at) in [(0..4, 0), (4..6, 9), (6..8, 14), (8..10, 19), (10..16, 24)] {
            let len = 2 * bytes.len();
            // The slice is exactly twice the input: cannot fail.
            let _ = hex::encode_to_slice(&self.0[bytes], &mut out[at..at + len]);
        }
        out
    }
}

impl fmt::Display for PodUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.canonical();
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PodUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for PodUuid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PodUuid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `^[a-z0-9]+(-[a-z0-9]+)*$`
pub fn is_ac_name(s: &str) -> bool {
    is_segmented(s, |c| c == b'-')
}

/// `^[a-z0-9]+([-._~/][a-z0-9]+)*$`
pub fn is_ac_identifier(s: &str) -> bool {
    is_segmented(s, |c| matches!(c, b'-' | b'.' | b'_' | b'~' | b'/'))
}

/// Runs of `[a-z0-9]` separated by single separator bytes, no separator at
/// either end.
fn is_segmented(s: &str, is_sep: impl Fn(u8) -> bool) -> bool {
    let mut prev_alnum = false;
    for &c in s.as_bytes() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prev_alnum = true;
        } else if is_sep(c) && prev_alnum {
            prev_alnum = false;
        } else {
            return false;
        }
    }
    prev_alnum
}

/// A semantic version `MAJOR.MINOR.PATCH[-pre][+build]`.
fn is_semver(s: &str) -> bool {
    let (core, _build) = s.split_once('+').unwrap_or((s, ""));
    let (core, _pre) = core.split_once('-').unwrap_or((core, ""));
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// An ordered list of `{name, value}` with unique AC-identifier names.
pub type Annotations = Vec<(String, String)>;

/// Validates an `annotations` member: absent or null → `None`.
fn annotations(v: Option<&Value>, what: &str) -> Result<Option<Annotations>, SchemaError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad(format!("{what}: annotations must be an array"))),
    };
    let mut out: Annotations = Vec::with_capacity(list.len());
    // Names seen so far: a set, so that validation stays linear in the
    // number of annotations (a list scan made 20k annotations cost 0.4 s).
    let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
    for item in list {
        let name = str_field(item, "name")
            .ok_or_else(|| bad(format!("{what}: annotation without a string name")))?;
        if !is_ac_identifier(name) {
            return Err(bad(format!(
                "{what}: annotation name {name:?} is not a valid AC identifier"
            )));
        }
        let value = str_field(item, "value")
            .ok_or_else(|| bad(format!("{what}: annotation {name:?} has no string value")))?;
        if !seen.insert(name) {
            return Err(bad(format!("{what}: duplicate annotation {name:?}")));
        }
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(Some(out))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn bad(msg: String) -> SchemaError {
    SchemaError::Manifest(msg)
}

fn header(obj: &Map<String, Value>, kind: &str) -> Result<(), SchemaError> {
    match obj.get("acKind").and_then(Value::as_str) {
        Some(k) if k == kind => {}
        Some(k) => return Err(bad(format!("acKind must be {kind:?}, got {k:?}"))),
        None => return Err(bad("acKind is missing".into())),
    }
    match obj.get("acVersion").and_then(Value::as_str) {
        Some(v) if is_semver(v) => Ok(()),
        Some(v) => Err(bad(format!("acVersion {v:?} is not a semantic version"))),
        None => Err(bad("acVersion is missing".into())),
    }
}

/// One app of a pod manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodApp {
    pub name: String,
    pub image_id: String,
    pub annotations: Annotations,
}

/// What the agent needs of a validated pod manifest (the JSON itself is
/// serialized once into the response body and not kept).
#[derive(Clone, Debug)]
pub struct PodManifest {
    pub apps: Vec<PodApp>,
    /// `None` when the manifest had no annotations.
    pub annotations: Option<Annotations>,
}

impl PodManifest {
    /// Validates `json`; returns the manifest and the JSON to echo: as
    /// received, with `"annotations": null` added when it had none (what
    /// rkt echoes, so `/pod/manifest` and `/pod/annotations` agree).
    pub fn from_value(mut json: Value) -> Result<(Self, Value), SchemaError> {
        let obj = json
            .as_object_mut()
            .ok_or_else(|| bad("pod manifest must be a JSON object".into()))?;
        header(obj, "PodManifest")?;
        let pod_annotations = annotations(obj.get("annotations"), "pod manifest")?;
        let list = match obj.get("apps") {
            Some(Value::Array(list)) => list,
            None | Some(Value::Null) => &Vec::new(),
            Some(_) => return Err(bad("apps must be an array".into())),
        };
        let mut apps: Vec<PodApp> = Vec::with_capacity(list.len());
        let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
        for app in list {
            let name =
                str_field(app, "name").ok_or_else(|| bad("an app has no string name".into()))?;
            if !is_ac_name(name) {
                return Err(SchemaError::AcName(name.to_owned()));
            }
            if !seen.insert(name) {
                return Err(bad(format!("duplicate app name {name:?}")));
            }
            let image = app
                .get("image")
                .ok_or_else(|| bad(format!("app {name:?} has no image")))?;
            let image_id = str_field(image, "id")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| bad(format!("app {name:?} has no image id")))?;
            if let Some(image_name) = image.get("name") {
                match image_name.as_str() {
                    Some(n) if is_ac_identifier(n) => {}
                    _ => {
                        return Err(bad(format!(
                            "app {name:?}: image name is not a valid AC identifier"
                        )))
                    }
                }
            }
            let app_annotations =
                annotations(app.get("annotations"), &format!("app {name:?}"))?.unwrap_or_default();
            apps.push(PodApp {
                name: name.to_owned(),
                image_id: image_id.to_owned(),
                annotations: app_annotations,
            });
        }
        if !obj.contains_key("annotations") {
            obj.insert("annotations".into(), Value::Null);
        }
        Ok((
            Self {
                apps,
                annotations: pod_annotations,
            },
            json,
        ))
    }

    pub fn app(&self, name: &str) -> Option<&PodApp> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// What the agent needs of a validated image manifest.
#[derive(Clone, Debug)]
pub struct ImageManifest {
    pub annotations: Annotations,
}

impl ImageManifest {
    /// Validates `json`; returns the manifest and the JSON (echoed as is).
    pub fn from_value(json: Value) -> Result<(Self, Value), SchemaError> {
        let obj = json
            .as_object()
            .ok_or_else(|| bad("image manifest must be a JSON object".into()))?;
        header(obj, "ImageManifest")?;
        match obj.get("name").and_then(Value::as_str) {
            Some(n) if is_ac_identifier(n) => {}
            Some(n) => return Err(SchemaError::AcIdentifier(n.to_owned())),
            None => return Err(bad("image manifest has no name".into())),
        }
        let annotations =
            annotations(obj.get("annotations"), "image manifest")?.unwrap_or_default();
        Ok((Self { annotations }, json))
    }
}

/// SPEC §3.1: the image's annotations in order; each of the pod's
/// annotations for the app replaces a same-named one in place, or is
/// appended.
pub fn merge_annotations(image: &Annotations, app: &Annotations) -> Annotations {
    let mut merged = image.clone();
    let mut at: HashMap<&str, usize> = image
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    for (name, value) in app {
        match at.get(name.as_str()) {
            Some(&i) => merged[i].1 = value.clone(),
            None => {
                at.insert(name, merged.len());
                merged.push((name.clone(), value.clone()));
            }
        }
    }
    merged
}

/// Annotations as appc JSON: `[{"name": ..., "value": ...}, ...]`.
pub fn annotations_json(list: &Annotations) -> Value {
    Value::Array(
        list.iter()
            .map(|(n, v)| serde_json::json!({"name": n, "value": v}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(rel: &str) -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/").to_owned() + rel;
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap()
    }

    #[test]
    fn uuid_forms() {
        let a = PodUuid::parse("6733C088-A507-4694-AABF-EDBE4FC5266F").unwrap();
        let b = PodUuid::parse("6733C088A5074694AABFEDBE4FC5266F").unwrap();
        let c = PodUuid::parse("6733-c088a5074694aabfedbe4fc5266-f").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.to_string(), "6733c088-a507-4694-aabf-edbe4fc5266f");
        for bad in [
            "",
            "6733c088",
            "6733c088-a507-4694-aabf-edbe4fc5266f0",
            "6733c088-a507-4694-aabf-edbe4fc5266g",
            "00000000-0000-0000-0000-000000000000",
            "6733c088-a507-4694-aabf-edbe4fc5266é",
        ] {
            assert!(PodUuid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_identifiers() {
        for ok in ["a", "web", "log-shipper", "a1-b2-3"] {
            assert!(is_ac_name(ok), "{ok}");
        }
        for no in ["", "-a", "a-", "a--b", "A", "a_b", "a/b", "a.b"] {
            assert!(!is_ac_name(no), "{no}");
        }
        for ok in ["example.com/tier", "coreos.com/rkt/stage1/run", "a~b_c.d-e"] {
            assert!(is_ac_identifier(ok), "{ok}");
        }
        for no in ["", "/a", "a/", "a//b", "Example.com", "a b", "a..b"] {
            assert!(!is_ac_identifier(no), "{no}");
        }
    }

    #[test]
    fn semver() {
        assert!(is_semver("0.8.11"));
        assert!(is_semver("1.30.0-rc.1+build.5"));
        assert!(!is_semver("1.2"));
        assert!(!is_semver("v1.2.3"));
    }

    #[test]
    fn fixtures_validate_and_echo_unknown_fields() {
        let (pod, echo) = PodManifest::from_value(fixture("pods/web-pod.json")).unwrap();
        assert_eq!(pod.apps.len(), 2);
        assert_eq!(echo["userLabels"], json!({"env": "prod"}));
        let (bare, echo) = PodManifest::from_value(fixture("pods/bare-pod.json")).unwrap();
        assert!(bare.annotations.is_none());
        assert_eq!(echo["annotations"], Value::Null);
        PodManifest::from_value(fixture("appc-examples/pod_runtime.json")).unwrap();
        for img in [
            "pods/web-image.json",
            "pods/log-shipper-image.json",
            "pods/worker-image.json",
            "appc-examples/image.json",
        ] {
            ImageManifest::from_value(fixture(img)).unwrap();
        }
    }

    #[test]
    fn many_annotations_validate_and_a_late_duplicate_is_found() {
        let many = |n: usize, dup: bool| {
            let mut list: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("a{i}"), "value": "v"}))
                .collect();
            if dup {
                list.push(json!({"name": "a0", "value": "again"}));
            }
            json!({"acKind": "PodManifest", "acVersion": "0.8.11", "annotations": list})
        };
        let (pod, _) = PodManifest::from_value(many(20_000, false)).unwrap();
        assert_eq!(pod.annotations.unwrap().len(), 20_000);
        let err = PodManifest::from_value(many(20_000, true)).unwrap_err();
        assert!(
            err.to_string().contains("duplicate annotation \"a0\""),
            "{err}"
        );
        // Merging keeps the image's order and appends in the app's.
        let image: Annotations = (0..10_000).map(|i| (format!("a{i}"), "i".into())).collect();
        let app: Annotations = vec![("a9999".into(), "x".into()), ("new".into(), "y".into())];
        let merged = merge_annotations(&image, &app);
        assert_eq!(merged.len(), 10_001);
        assert_eq!(merged[9_999], ("a9999".into(), "x".into()));
        assert_eq!(merged[10_000], ("new".into(), "y".into()));
    }

    #[test]
    fn merge_order_matches_the_fixture_readme() {
        let (pod, _) = PodManifest::from_value(fixture("pods/web-pod.json")).unwrap();
        let (image, _) = ImageManifest::from_value(fixture("pods/web-image.json")).unwrap();
        let merged = merge_annotations(&image.annotations, &pod.app("web").unwrap().annotations);
        let names: Vec<_> = merged.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "authors",
                "example.com/tier",
                "created",
                "coreos.com/rkt/stage1/run"
            ]
        );
        assert_eq!(merged[1].1, "frontend-override");
    }

    #[test]
    fn invalid_manifests() {
        let base = fixture("pods/bare-pod.json");
        let cases: Vec<(&str, Value)> = vec![
            (
                "wrong kind",
                json!({"acKind": "ImageManifest", "acVersion": "0.8.11", "apps": []}),
            ),
            ("no version", json!({"acKind": "PodManifest", "apps": []})),
            (
                "bad version",
                json!({"acKind": "PodManifest", "acVersion": "x", "apps": []}),
            ),
            ("not object", json!([1])),
            ("bad app name", {
                let mut v = base.clone();
                v["apps"][0]["name"] = json!("Worker");
                v
            }),
            ("dup app", {
                let mut v = base.clone();
                let app = v["apps"][0].clone();
                v["apps"].as_array_mut().unwrap().push(app);
                v
            }),
            ("no image id", {
                let mut v = base.clone();
                v["apps"][0]["image"] = json!({"name": "example.com/x"});
                v
            }),
            ("dup annotation", {
                let mut v = base.clone();
                v["annotations"] =
                    json!([{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]);
                v
            }),
            ("bad annotation name", {
                let mut v = base.clone();
                v["annotations"] = json!([{"name": "A b", "value": "1"}]);
                v
            }),
        ];
        for (what, v) in cases {
            assert!(PodManifest::from_value(v).is_err(), "{what}");
        }
        assert!(ImageManifest::from_value(
            json!({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "Bad Name"})
        )
        .is_err());
        assert!(ImageManifest::from_value(
            json!({"acKind": "PodManifest", "acVersion": "0.8.11", "name": "ok"})
        )
        .is_err());
    }
}
