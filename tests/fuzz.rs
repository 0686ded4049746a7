//! Property and mutation fuzzing of every parser that reads untrusted bytes
//! (issue 10), on the stable toolchain: proptest's `TestRunner` drives each
//! parser with `FUZZ_CASES` inputs (default 2000), built from structured
//! strategies and from mutations of the fixtures in ../shared/fixtures
//! (read at test time, never copied). Each test ends with one line on
//! stderr, `fuzz NAME: N inputs, F failures (...)`.
//!
//! `FUZZ_SEED=S` replays a run (every failure prints its seed and the
//! minimal failing input). No failure file is ever written. An input that
//! runs longer than `SLOW` fails; one that runs longer than `HANG` aborts
//! the process after printing it. `integration/fuzz.sh` runs 10^6 inputs
//! per parser in release mode.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashSet},
    fmt,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, Once, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use proptest::{
    collection::{btree_map, vec},
    option,
    prelude::*,
    sample::{select, Index},
    test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner},
};
use serde_json::{Map, Value};

use rkt_mds::{
    api::{
        form::Form,
        public::{endpoint, route, Redacted, Route},
        registration,
    },
    appc::{
        is_ac_identifier, is_ac_name, merge_annotations, Annotations, ImageManifest, PodManifest,
        PodUuid,
    },
    persist::{PodStore, Record, StoredNetns},
    registry::Registrant,
};

// ---------------------------------------------------------------------------
// The harness.

/// An input slower than this is a failure (a quadratic path, say).
const SLOW: Duration = Duration::from_secs(5);
/// An input still running after this is a hang: it is printed and the
/// process aborts (a hung parser cannot be unwound).
const HANG: Duration = Duration::from_secs(60);

fn cases() -> u32 {
    match std::env::var("FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_CASES={v:?} is not a number")),
        Err(_) => 2000,
    }
}

fn seed() -> u64 {
    match std::env::var("FUZZ_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_SEED={v:?} is not a u64")),
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        }
    }
}

thread_local! {
    /// Set while a generated input runs: its panics are expected and
    /// reported once, with the minimal input, not once per shrink step.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(Cell::get) {
                default(info)
            }
        }));
    });
}

struct InCase;

impl InCase {
    fn enter() -> Self {
        IN_CASE.with(|c| c.set(true));
        InCase
    }
}

impl Drop for InCase {
    fn drop(&mut self) {
        IN_CASE.with(|c| c.set(false));
    }
}

/// Counters shown in the summary line: how deep the inputs reached.
#[derive(Default)]
struct Stats(RefCell<BTreeMap<&'static str, u64>>);

impl Stats {
    fn hit(&self, what: &'static str) {
        *self.0.borrow_mut().entry(what).or_default() += 1;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (what, n) in self.0.borrow().iter() {
            write!(f, "{what} {n}; ")?;
        }
        Ok(())
    }
}

/// Runs `check` on `FUZZ_CASES` inputs drawn from `strategy`, prints the
/// summary line, and on failure prints the seed and the minimal input,
/// runs it once more outside the quiet hook (so a panic shows where), and
/// fails the test.
fn fuzz<S>(name: &str, strategy: S, check: impl Fn(&S::Value, &Stats) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Clone + Send,
{
    install_quiet_panic_hook();
    let (cases, seed) = (cases(), seed());
    let config = Config {
        cases,
        failure_persistence: None,
        source_file: None,
        rng_seed: RngSeed::Fixed(seed),
        fork: false,
        timeout: 0,
        max_shrink_iters: 4096,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let inputs = AtomicU64::new(0);
    let stats = Stats::default();
    let current: Mutex<Option<(Instant, S::Value)>> = Mutex::new(None);
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        let watchdog = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_secs(1));
                let guard = current.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((started, input)) = guard.as_ref() {
                    if started.elapsed() > HANG {
                        let _ = writeln!(
                            std::io::stderr(),
                            "fuzz {name}: an input has run for {:?}, a hang (FUZZ_SEED={seed} \
                             FUZZ_CASES={cases}):\n{input:#?}",
                            started.elapsed()
                        );
                        std::process::abort();
                    }
                }
            }
        });
        let result = runner.run(&strategy, |input| {
            inputs.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            *current.lock().unwrap_or_else(|e| e.into_inner()) = Some((started, input.clone()));
            let outcome = {
                let _quiet = InCase::enter();
                check(&input, &stats)
            };
            *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
            outcome?;
            let took = started.elapsed();
            if took > SLOW {
                return Err(TestCaseError::fail(format!("slow input: {took:?}")));
            }
            Ok(())
        });
        done.store(true, Ordering::Relaxed);
        watchdog.thread().unpark();
        result
    });
    let n = inputs.load(Ordering::Relaxed);
    let mut err = std::io::stderr();
    match result {
        Ok(()) => {
            let _ = writeln!(
                err,
                "fuzz {name}: {n} inputs, 0 failures ({stats}FUZZ_SEED={seed})"
            );
        }
        Err(TestError::Abort(reason)) => {
            let _ = writeln!(
                err,
                "fuzz {name}: {n} inputs, run aborted: {reason} (FUZZ_SEED={seed})"
            );
            panic!("fuzz {name}: {reason}");
        }
        Err(TestError::Fail(reason, input)) => {
            let _ = writeln!(
                err,
                "fuzz {name}: {n} inputs (shrinking included), 1 failure; replay with \
                 FUZZ_SEED={seed} FUZZ_CASES={cases}\n  reason: {reason}\n  minimal failing \
                 input: {input:#?}"
            );
            // Once more, loudly: a panic prints its location.
            if let Err(e) = check(&input, &Stats::default()) {
                let _ = writeln!(err, "  on replay: {e}");
            }
            panic!("fuzz {name}: {reason}");
        }
    }
}

/// Bytes shown as an escaped byte string.
#[derive(Clone, PartialEq, Eq)]
struct Blob(Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn string_of(alphabet: &str, len: std::ops::Range<usize>) -> BoxedStrategy<String> {
    let chars: Vec<char> = alphabet.chars().collect();
    vec(select(chars), len)
        .prop_map(|v| v.into_iter().collect())
        .boxed()
}

fn any_string(len: std::ops::Range<usize>) -> BoxedStrategy<String> {
    vec(any::<char>(), len)
        .prop_map(|v| v.into_iter().collect())
        .boxed()
}

fn pick(i: &Index, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i.index(len)
    }
}

// ---------------------------------------------------------------------------
// Fixtures and byte-level mutation.

const FIXTURE_FILES: &[&str] = &[
    "pods/web-pod.json",
    "pods/bare-pod.json",
    "appc-examples/pod_runtime.json",
    "pods/web-image.json",
    "pods/log-shipper-image.json",
    "pods/worker-image.json",
    "appc-examples/image.json",
];
/// `FIXTURE_FILES[..POD_FIXTURES]` are pod manifests, the rest images.
const POD_FIXTURES: usize = 3;

fn fixtures() -> &'static [Vec<u8>] {
    static F: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        FIXTURE_FILES
            .iter()
            .map(|rel| {
                let path =
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/").to_owned() + rel;
                std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
            })
            .collect()
    })
}

fn fixture_values() -> &'static [Value] {
    static V: OnceLock<Vec<Value>> = OnceLock::new();
    V.get_or_init(|| {
        fixtures()
            .iter()
            .map(|b| serde_json::from_slice(b).expect("fixture is JSON"))
            .collect()
    })
}

/// Fragments worth inserting into JSON.
const JSON_TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "0",
    "-1",
    "1e999",
    "-0.0",
    "1.5e-7",
    "18446744073709551616",
    "\"acKind\"",
    "\"acVersion\"",
    "\"PodManifest\"",
    "\"ImageManifest\"",
    "\"apps\"",
    "\"annotations\"",
    "\"name\"",
    "\"value\"",
    "\"image\"",
    "\"id\"",
    "\\u0000",
    "\\ud800",
    "\\\"",
    "\\",
    "é",
    "\u{feff}",
    "\"a--b\"",
    "{\"name\":\"x\",\"value\":\"y\"}",
    "{\"name\":\"web\",\"image\":{\"id\":\"i\"}}",
];

#[derive(Clone, Debug)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    /// Copies `len` bytes at `from` of a donor over to `at`.
    Splice {
        at: Index,
        donor: Index,
        from: Index,
        len: u16,
    },
    Duplicate(Index, u8),
    Truncate(Index),
}

fn insertion() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => select(JSON_TOKENS).prop_map(|s| s.as_bytes().to_vec()),
        2 => vec(any::<u8>(), 1..8),
        1 => (1usize..300).prop_map(|n| b"[".repeat(n)),
        1 => (1usize..300).prop_map(|n| b"{\"a\":".repeat(n)),
    ]
    .boxed()
}

fn edit() -> BoxedStrategy<Edit> {
    prop_oneof![
        any::<(Index, u8)>().prop_map(|(i, b)| Edit::Flip(i, b % 8)),
        any::<(Index, u8)>().prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), insertion()).prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<Index>(), 1u8..32).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<(Index, Index, Index)>(), 1u16..512).prop_map(|((at, donor, from), len)| {
            Edit::Splice {
                at,
                donor,
                from,
                len,
            }
        }),
        (any::<Index>(), 1u8..64).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
    .boxed()
}

fn apply_edits(buf: &mut Vec<u8>, edits: &[Edit], donors: &[Vec<u8>]) {
    for e in edits {
        let len = buf.len();
        match e {
            Edit::Flip(i, bit) if len > 0 => buf[i.index(len)] ^= 1 << bit,
            Edit::Set(i, b) if len > 0 => buf[i.index(len)] = *b,
            Edit::Insert(i, bytes) => {
                let at = i.index(len + 1);
                buf.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                buf.drain(at..(at + *n as usize).min(len));
            }
            Edit::Splice {
                at,
                donor,
                from,
                len: n,
            } if !donors.is_empty() => {
                let d = &donors[donor.index(donors.len())];
                let start = pick(from, d.len());
                let piece = &d[start..(start + *n as usize).min(d.len())];
                let at = at.index(len + 1);
                buf.splice(at..at, piece.iter().copied());
            }
            Edit::Duplicate(i, n) if len > 0 => {
                let at = i.index(len);
                let piece = buf[at..(at + *n as usize).min(len)].to_vec();
                buf.splice(at..at, piece);
            }
            Edit::Truncate(i) => buf.truncate(i.index(len + 1)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// JSON from the appc vocabulary, and value-level mutation.

const VALID_NAMES: &[&str] = &[
    "web",
    "log-shipper",
    "worker",
    "a",
    "a1-b2-3",
    "reduce-worker",
    "backup",
    "0",
];
const INVALID_NAMES: &[&str] = &[
    "", "Web", "-a", "a-", "a--b", "a_b", "a/b", "a.b", "é", " a", "a\u{0}", "web\n",
];
const VALID_IDS: &[&str] = &[
    "example.com/tier",
    "coreos.com/rkt/stage1/run",
    "authors",
    "created",
    "a~b_c.d-e",
    "example.com/owner",
    "foo",
    "x",
];
const INVALID_IDS: &[&str] = &[
    "",
    "/a",
    "a/",
    "a//b",
    "Example.com",
    "a b",
    "a..b",
    "a~",
    "é",
    "a\u{0}b",
];
const VERSIONS: &[&str] = &[
    "0.8.11",
    "1.30.0",
    "1.2.3-rc.1+build.5",
    "0.0.0",
    "10.20.30+x",
    "1.2.3-",
    "1.2",
    "v1.2.3",
    "1..3",
    "",
    "1.2.3.4",
    "a.b.c",
    "1.2.x",
    "1.2.3+a+b",
    "1.2.3-a-b",
];
const KEYS: &[&str] = &[
    "acKind",
    "acVersion",
    "apps",
    "name",
    "image",
    "id",
    "annotations",
    "value",
    "app",
    "labels",
    "exec",
    "volumes",
    "userLabels",
    "",
    "ACKIND",
    "acKind ",
];

fn vocab_string() -> BoxedStrategy<String> {
    let all: Vec<&'static str> = [
        VALID_NAMES,
        INVALID_NAMES,
        VALID_IDS,
        INVALID_IDS,
        VERSIONS,
        KEYS,
        &["PodManifest", "ImageManifest"],
    ]
    .concat();
    prop_oneof![
        4 => select(all).prop_map(str::to_owned),
        2 => string_of("abz09-._~/A é\"\\", 0..16),
        1 => any_string(0..16),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(KEYS).prop_map(str::to_owned),
        1 => string_of("abcXYZ_", 0..8),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        3 => vocab_string().prop_map(Value::String),
    ]
    .boxed()
}

fn json_any() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 24, 5, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                vec((key(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// An object of the fields that are present.
fn obj(fields: Vec<(&str, Option<Value>)>, extra: Vec<(String, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    for (k, v) in extra {
        m.insert(k, v);
    }
    Value::Object(m)
}

fn ac_name() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => select(VALID_NAMES).prop_map(Value::from),
        4 => string_of("abz09-", 1..10).prop_map(Value::from),
        2 => select(INVALID_NAMES).prop_map(Value::from),
        1 => json_leaf(),
    ]
    .boxed()
}

fn ac_identifier() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => select(VALID_IDS).prop_map(Value::from),
        4 => string_of("abz09-._~/", 1..16).prop_map(Value::from),
        2 => select(INVALID_IDS).prop_map(Value::from),
        1 => json_leaf(),
    ]
    .boxed()
}

fn annotation() -> BoxedStrategy<Value> {
    prop_oneof![
        20 => (
            option::weighted(0.97, ac_identifier()),
            option::weighted(0.97, prop_oneof![9 => vocab_string().prop_map(Value::String), 1 => json_leaf()]),
            vec((key(), json_leaf()), 0..2),
        )
            .prop_map(|(name, value, extra)| obj(vec![("name", name), ("value", value)], extra)),
        1 => json_leaf(),
    ]
    .boxed()
}

fn annotations() -> BoxedStrategy<Value> {
    prop_oneof![
        12 => vec(annotation(), 0..5).prop_map(Value::Array),
        1 => Just(Value::Null),
        1 => json_any(),
    ]
    .boxed()
}

fn version() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => select(&VERSIONS[..5]).prop_map(Value::from),
        2 => select(VERSIONS).prop_map(Value::from),
        1 => string_of("0123456789.-+a", 0..12).prop_map(Value::from),
        1 => json_leaf(),
    ]
    .boxed()
}

fn kind(k: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![
        12 => Just(Value::from(k)),
        1 => select(&["PodManifest", "ImageManifest", "podmanifest", ""][..]).prop_map(Value::from),
        1 => json_leaf(),
    ]
    .boxed()
}

fn image() -> BoxedStrategy<Value> {
    let id = prop_oneof![
        8 => Just(Value::from(
            "sha512-aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55aa55"
        )),
        4 => string_of("sha512-0123456789abcdef", 1..20).prop_map(Value::from),
        1 => Just(Value::from("")),
        1 => json_leaf(),
    ];
    prop_oneof![
        20 => (
            option::weighted(0.95, id),
            option::weighted(0.7, ac_identifier()),
            option::weighted(0.2, json_any()),
        )
            .prop_map(|(id, name, labels)| {
                obj(vec![("id", id), ("name", name), ("labels", labels)], vec![])
            }),
        1 => json_any(),
    ]
    .boxed()
}

fn app() -> BoxedStrategy<Value> {
    prop_oneof![
        30 => (
            option::weighted(0.97, ac_name()),
            option::weighted(0.97, image()),
            option::weighted(0.4, annotations()),
            option::weighted(0.2, json_any()),
        )
            .prop_map(|(name, image, annotations, app)| {
                obj(
                    vec![
                        ("name", name),
                        ("image", image),
                        ("annotations", annotations),
                        ("app", app),
                    ],
                    vec![],
                )
            }),
        1 => json_leaf(),
    ]
    .boxed()
}

fn pod_manifest() -> BoxedStrategy<Value> {
    (
        option::weighted(0.97, kind("PodManifest")),
        option::weighted(0.97, version()),
        option::weighted(
            0.9,
            prop_oneof![12 => vec(app(), 0..5).prop_map(Value::Array), 1 => json_leaf()],
        ),
        option::weighted(0.6, annotations()),
        vec((key(), json_any()), 0..3),
    )
        .prop_map(|(k, v, apps, ann, extra)| {
            obj(
                vec![
                    ("acKind", k),
                    ("acVersion", v),
                    ("apps", apps),
                    ("annotations", ann),
                ],
                extra,
            )
        })
        .boxed()
}

fn image_manifest() -> BoxedStrategy<Value> {
    (
        option::weighted(0.97, kind("ImageManifest")),
        option::weighted(0.97, version()),
        option::weighted(0.97, ac_identifier()),
        option::weighted(0.6, annotations()),
        vec((key(), json_any()), 0..3),
    )
        .prop_map(|(k, v, name, ann, extra)| {
            obj(
                vec![
                    ("acKind", k),
                    ("acVersion", v),
                    ("name", name),
                    ("annotations", ann),
                ],
                extra,
            )
        })
        .boxed()
}

/// A change at one node of a JSON tree (nodes numbered in pre-order).
#[derive(Clone, Debug)]
enum ValueEdit {
    Replace(Index, Value),
    Remove(Index),
    /// Into an object: this key; into an array: appended.
    Add(Index, String, Value),
    /// Appends a copy of the node to its parent array, or re-inserts it
    /// under a vocabulary key of its parent object.
    Duplicate(Index, String),
}

fn value_edit() -> BoxedStrategy<ValueEdit> {
    prop_oneof![
        3 => (any::<Index>(), json_any()).prop_map(|(i, v)| ValueEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(ValueEdit::Remove),
        2 => (any::<Index>(), key(), json_any()).prop_map(|(i, k, v)| ValueEdit::Add(i, k, v)),
        2 => (any::<Index>(), key()).prop_map(|(i, k)| ValueEdit::Duplicate(i, k)),
    ]
    .boxed()
}

#[derive(Clone)]
enum Step {
    Key(String),
    At(usize),
}

fn node_paths(v: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(here.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                here.push(Step::At(i));
                node_paths(x, here, out);
                here.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                here.push(Step::Key(k.clone()));
                node_paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(mut v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for s in path {
        v = match (s, v) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Step::At(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn apply_value_edits(root: &mut Value, edits: &[ValueEdit]) {
    for e in edits {
        let mut paths = Vec::new();
        node_paths(root, &mut Vec::new(), &mut paths);
        let (ValueEdit::Replace(i, _)
        | ValueEdit::Remove(i)
        | ValueEdit::Add(i, ..)
        | ValueEdit::Duplicate(i, _)) = e;
        let path = paths.swap_remove(i.index(paths.len()));
        match e {
            ValueEdit::Replace(_, v) => {
                if let Some(n) = node_mut(root, &path) {
                    *n = v.clone();
                }
            }
            ValueEdit::Add(_, k, v) => match node_mut(root, &path) {
                Some(Value::Object(m)) => {
                    m.insert(k.clone(), v.clone());
                }
                Some(Value::Array(a)) => a.push(v.clone()),
                Some(n) => *n = v.clone(),
                None => {}
            },
            ValueEdit::Remove(_) | ValueEdit::Duplicate(..) => {
                let Some((last, parent)) = path.split_last() else {
                    if matches!(e, ValueEdit::Remove(_)) {
                        *root = Value::Null;
                    }
                    continue;
                };
                let Some(parent) = node_mut(root, parent) else {
                    continue;
                };
                match (e, last, parent) {
                    (ValueEdit::Remove(_), Step::Key(k), Value::Object(m)) => {
                        m.shift_remove(k);
                    }
                    (ValueEdit::Remove(_), Step::At(i), Value::Array(a)) => {
                        a.remove(*i);
                    }
                    (ValueEdit::Duplicate(_, k), Step::Key(old), Value::Object(m)) => {
                        if let Some(v) = m.get(old).cloned() {
                            m.insert(k.clone(), v);
                        }
                    }
                    (ValueEdit::Duplicate(..), Step::At(i), Value::Array(a)) => {
                        let v = a[*i].clone();
                        a.push(v);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn to_bytes(v: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    }
    .expect("a Value serializes")
}

/// Manifest-shaped bytes: `fixtures` are the indices of the fixtures to
/// mutate, `structured` builds values from the appc vocabulary.
fn manifest_bytes(
    fixtures_range: std::ops::Range<usize>,
    structured: BoxedStrategy<Value>,
) -> BoxedStrategy<Blob> {
    let r1 = fixtures_range.clone();
    let r2 = fixtures_range;
    prop_oneof![
        1 => vec(any::<u8>(), 0..256).prop_map(Blob),
        1 => any_string(0..64).prop_map(|s| Blob(s.into_bytes())),
        // Byte-level edits of a fixture.
        3 => (any::<Index>(), vec(edit(), 1..5)).prop_map(move |(f, edits)| {
            let mut b = fixtures()[r1.start + f.index(r1.len())].clone();
            apply_edits(&mut b, &edits, fixtures());
            Blob(b)
        }),
        // Value-level edits of a fixture.
        3 => (any::<Index>(), vec(value_edit(), 0..4), any::<bool>()).prop_map(
            move |(f, edits, pretty)| {
                let mut v = fixture_values()[r2.start + f.index(r2.len())].clone();
                apply_value_edits(&mut v, &edits);
                Blob(to_bytes(&v, pretty))
            }
        ),
        // Built from the vocabulary, then maybe edited.
        6 => (
            structured,
            option::weighted(0.15, vec(value_edit(), 1..3)),
            option::weighted(0.1, vec(edit(), 1..3)),
            any::<bool>(),
        )
            .prop_map(|(mut v, vedits, edits, pretty)| {
                apply_value_edits(&mut v, vedits.as_deref().unwrap_or_default());
                let mut b = to_bytes(&v, pretty);
                apply_edits(&mut b, edits.as_deref().unwrap_or_default(), fixtures());
                Blob(b)
            }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// 1. Manifests and appc validation.

/// Reference models, written from appc's definitions.
fn model_ac_name(s: &str) -> bool {
    s.split('-')
        .all(|seg| !seg.is_empty() && seg.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9')))
}

fn model_ac_identifier(s: &str) -> bool {
    s.split(['-', '.', '_', '~', '/'])
        .all(|seg| !seg.is_empty() && seg.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9')))
}

fn model_semver(s: &str) -> bool {
    let core = s.split('+').next().unwrap_or("");
    let core = core.split('-').next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// `None`: invalid; `Some(None)`: absent or null.
fn model_annotations(v: Option<&Value>) -> Option<Option<Annotations>> {
    let list = match v {
        None | Some(Value::Null) => return Some(None),
        Some(Value::Array(l)) => l,
        Some(_) => return None,
    };
    let mut out: Annotations = Vec::new();
    for item in list {
        let name = item.get("name")?.as_str()?;
        let value = item.get("value")?.as_str()?;
        if !model_ac_identifier(name) || out.iter().any(|(n, _)| n == name) {
            return None;
        }
        out.push((name.to_owned(), value.to_owned()));
    }
    Some(Some(out))
}

fn model_header(m: &Map<String, Value>, kind: &str) -> bool {
    m.get("acKind").and_then(Value::as_str) == Some(kind)
        && m.get("acVersion")
            .and_then(Value::as_str)
            .is_some_and(model_semver)
}

type ModelApp = (String, String, Annotations);

fn model_pod(v: &Value) -> Option<(Vec<ModelApp>, Option<Annotations>)> {
    let m = v.as_object()?;
    if !model_header(m, "PodManifest") {
        return None;
    }
    let annotations = model_annotations(m.get("annotations"))?;
    let list = match m.get("apps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(l)) => l.clone(),
        Some(_) => return None,
    };
    let mut apps: Vec<ModelApp> = Vec::new();
    for app in &list {
        let name = app.get("name")?.as_str()?;
        if !model_ac_name(name) || apps.iter().any(|a| a.0 == name) {
            return None;
        }
        let image = app.get("image")?;
        let id = image.get("id")?.as_str().filter(|s| !s.is_empty())?;
        if let Some(n) = image.get("name") {
            if !n.as_str().is_some_and(model_ac_identifier) {
                return None;
            }
        }
        let ann = model_annotations(app.get("annotations"))?.unwrap_or_default();
        apps.push((name.to_owned(), id.to_owned(), ann));
    }
    Some((apps, annotations))
}

fn model_image(v: &Value) -> Option<Annotations> {
    let m = v.as_object()?;
    if !model_header(m, "ImageManifest") {
        return None;
    }
    if !m
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(model_ac_identifier)
    {
        return None;
    }
    Some(model_annotations(m.get("annotations"))?.unwrap_or_default())
}

fn model_merge(image: &Annotations, app: &Annotations) -> Annotations {
    let mut out = image.clone();
    for (n, v) in app {
        match out.iter().rposition(|(m, _)| m == n) {
            Some(i) => out[i].1 = v.clone(),
            None => out.push((n.clone(), v.clone())),
        }
    }
    out
}

/// JSON equality, but floats within a few ULPs: serde_json (without its
/// `float_roundtrip` feature) may read a float it wrote one ULP off.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x).abs() < 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn pod_apps(m: &PodManifest) -> Vec<ModelApp> {
    m.apps
        .iter()
        .map(|a| (a.name.clone(), a.image_id.clone(), a.annotations.clone()))
        .collect()
}

/// PodManifest::from_value against the model; an accepted manifest's echo,
/// serialized and parsed again, is accepted again with the same result.
fn check_pod(v: &Value, stats: &Stats) -> Result<Option<PodManifest>, TestCaseError> {
    let model = model_pod(v);
    match PodManifest::from_value(v.clone()) {
        Ok((m, echo)) => {
            stats.hit("pods accepted");
            let Some((apps, annotations)) = model else {
                return Err(TestCaseError::fail(
                    "accepted a pod manifest the model refuses",
                ));
            };
            prop_assert_eq!(&pod_apps(&m), &apps);
            prop_assert_eq!(&m.annotations, &annotations);
            let mut expected = v.clone();
            if let Some(o) = expected.as_object_mut() {
                o.entry("annotations").or_insert(Value::Null);
            }
            prop_assert_eq!(
                &echo,
                &expected,
                "the echo is the input plus annotations: null"
            );
            let bytes = serde_json::to_vec(&echo).expect("serializes");
            let again: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("echo does not parse: {e}")))?;
            prop_assert!(
                json_eq(&again, &echo),
                "{:?} read back as {:?}",
                echo,
                again
            );
            let (m2, echo2) = PodManifest::from_value(again)
                .map_err(|e| TestCaseError::fail(format!("echo refused: {e}")))?;
            prop_assert_eq!(pod_apps(&m2), pod_apps(&m));
            prop_assert_eq!(&m2.annotations, &m.annotations);
            prop_assert!(
                json_eq(&echo2, &echo),
                "not idempotent: {:?} then {:?}",
                echo,
                echo2
            );
            for a in &m.apps {
                prop_assert!(m.app(&a.name).is_some_and(|b| b == a));
            }
            Ok(Some(m))
        }
        Err(e) => {
            prop_assert!(
                model.is_none(),
                "refused ({}) a pod manifest the model accepts",
                e
            );
            prop_assert!(!e.to_string().is_empty());
            Ok(None)
        }
    }
}

fn check_image(v: &Value, stats: &Stats) -> Result<Option<ImageManifest>, TestCaseError> {
    let model = model_image(v);
    match ImageManifest::from_value(v.clone()) {
        Ok((m, echo)) => {
            stats.hit("images accepted");
            let Some(annotations) = model else {
                return Err(TestCaseError::fail(
                    "accepted an image manifest the model refuses",
                ));
            };
            prop_assert_eq!(&m.annotations, &annotations);
            prop_assert_eq!(&echo, v, "an image manifest is echoed as is");
            let again: Value =
                serde_json::from_slice(&serde_json::to_vec(&echo).expect("serializes"))
                    .map_err(|e| TestCaseError::fail(format!("echo does not parse: {e}")))?;
            let (m2, echo2) = ImageManifest::from_value(again)
                .map_err(|e| TestCaseError::fail(format!("echo refused: {e}")))?;
            prop_assert_eq!(&m2.annotations, &m.annotations);
            prop_assert!(
                json_eq(&echo2, &echo),
                "not idempotent: {:?} then {:?}",
                echo,
                echo2
            );
            Ok(Some(m))
        }
        Err(e) => {
            prop_assert!(
                model.is_none(),
                "refused ({}) an image manifest the model accepts",
                e
            );
            Ok(None)
        }
    }
}

fn check_merge(image: &Annotations, app: &Annotations) -> Result<(), TestCaseError> {
    prop_assert_eq!(merge_annotations(image, app), model_merge(image, app));
    Ok(())
}

#[derive(Clone, Debug)]
struct ManifestCase {
    pod: Blob,
    image: Blob,
    /// Free-form lists (duplicates allowed) for merge_annotations.
    merge: (Annotations, Annotations),
}

fn small_annotations() -> BoxedStrategy<Annotations> {
    vec(
        (
            select(&["a", "b", "c", "x/y"][..]),
            select(&["1", "2", ""][..]),
        )
            .prop_map(|(n, v)| (n.to_owned(), v.to_owned())),
        0..5,
    )
    .boxed()
}

#[test]
fn manifests() {
    let strategy = (
        manifest_bytes(0..POD_FIXTURES, pod_manifest()),
        manifest_bytes(POD_FIXTURES..FIXTURE_FILES.len(), image_manifest()),
        (small_annotations(), small_annotations()),
    )
        .prop_map(|(pod, image, merge)| ManifestCase { pod, image, merge });
    fuzz("manifests", strategy, |case, stats| {
        let mut pods = Vec::new();
        let mut images = Vec::new();
        for blob in [&case.pod, &case.image] {
            // As the registration API reads a body.
            let Ok(v) = serde_json::from_slice::<Value>(&blob.0) else {
                continue;
            };
            stats.hit("json");
            pods.extend(check_pod(&v, stats)?);
            images.extend(check_image(&v, stats)?);
        }
        for pod in &pods {
            for image in &images {
                stats.hit("merges");
                for app in &pod.apps {
                    check_merge(&image.annotations, &app.annotations)?;
                }
            }
        }
        check_merge(&case.merge.0, &case.merge.1)
    });
}

// ---------------------------------------------------------------------------
// 1b. UUIDs, AC names and identifiers.

fn model_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(&hex, &mut out).ok()?;
    (out != [0; 16]).then_some(out)
}

fn uuid_text() -> BoxedStrategy<String> {
    (
        vec(any::<u8>(), 16),
        vec((any::<Index>(), 1usize..3), 0..5),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(bytes, dashes, case, zero)| {
            let bytes = if zero { vec![0; 16] } else { bytes };
            let mut s: Vec<char> = hex::encode(bytes).chars().collect();
            match case {
                0 => {}
                1 => s.iter_mut().for_each(|c| *c = c.to_ascii_uppercase()),
                _ => s
                    .iter_mut()
                    .step_by(3)
                    .for_each(|c| *c = c.to_ascii_uppercase()),
            }
            for (at, n) in dashes {
                let at = at.index(s.len() + 1);
                for _ in 0..n {
                    s.insert(at, '-');
                }
            }
            s.into_iter().collect()
        })
        .boxed()
}

#[test]
fn appc_values() {
    let strategy = prop_oneof![
        2 => uuid_text(),
        // A canonical UUID, edited.
        1 => (uuid_text(), any::<Index>(), select(&["", "0", "g", "-", "é", "00", "\u{0}"][..]))
            .prop_map(|(s, at, ins)| {
                let mut c: Vec<char> = s.chars().collect();
                let at = at.index(c.len() + 1);
                if ins.is_empty() && at < c.len() {
                    c.remove(at);
                } else {
                    c.splice(at..at, ins.chars());
                }
                c.into_iter().collect()
            }),
        2 => string_of("0123456789abcdefABCDEF-g", 0..48),
        2 => string_of("abz09-._~/A_ é", 0..24),
        1 => select([VALID_NAMES, INVALID_NAMES, VALID_IDS, INVALID_IDS].concat()).prop_map(str::to_owned),
        1 => any_string(0..40),
    ];
    fuzz("appc-values", strategy, |s: &String, stats| {
        prop_assert_eq!(is_ac_name(s), model_ac_name(s), "is_ac_name");
        prop_assert_eq!(
            is_ac_identifier(s),
            model_ac_identifier(s),
            "is_ac_identifier"
        );
        if is_ac_name(s) {
            prop_assert!(is_ac_identifier(s), "every AC name is an AC identifier");
        }
        match (PodUuid::parse(s), model_uuid(s)) {
            (Ok(u), Some(bytes)) => {
                stats.hit("uuids");
                prop_assert_eq!(u.as_bytes(), &bytes);
                let shown = u.to_string();
                prop_assert_eq!(shown.len(), 36);
                for (i, c) in shown.char_indices() {
                    if [8, 13, 18, 23].contains(&i) {
                        prop_assert_eq!(c, '-');
                    } else {
                        prop_assert!(matches!(c, '0'..='9' | 'a'..='f'), "{}", shown);
                    }
                }
                prop_assert_eq!(PodUuid::parse(&shown).ok(), Some(u), "display round-trips");
                prop_assert_eq!(format!("{u:?}"), shown.clone());
                let json = serde_json::to_string(&u).expect("serializes");
                prop_assert_eq!(&json, &format!("\"{shown}\""));
                prop_assert_eq!(serde_json::from_str::<PodUuid>(&json).ok(), Some(u));
            }
            (Err(e), None) => prop_assert!(!e.to_string().is_empty()),
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "PodUuid::parse gave {got:?}, the model {want:?}"
                )))
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 2. Form and multipart bodies.

/// Form fields as raw (name, value) bytes, in order.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Debug)]
struct FormCase {
    content_type: Option<String>,
    body: Blob,
    query: Option<String>,
    /// The (name, value) pairs the body was built from, when it is
    /// well formed.
    built: Option<Pairs>,
}

const FORM_NAMES: &[&str] = &[
    "content",
    "uuid",
    "signature",
    "",
    "a b",
    "x=y",
    "a&b",
    "100%",
    "+",
    "é",
];

fn form_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(FORM_NAMES).prop_map(str::to_owned),
        1 => string_of("abc=&+% é", 0..6),
    ]
    .boxed()
}

fn form_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => vec(any::<u8>(), 0..40),
        1 => string_of("ab =&+%\r\n-é", 0..20).prop_map(String::into_bytes),
    ]
    .boxed()
}

/// Percent-encodes: reserved bytes always, other bytes at random.
fn url_encode(bytes: &[u8], style: &[u8]) -> String {
    let mut out = String::new();
    for (i, &b) in bytes.iter().enumerate() {
        let s = style.get(i % style.len().max(1)).copied().unwrap_or(0);
        match b {
            b' ' if s % 2 == 0 => out.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'*'
                if s % 3 != 0 =>
            {
                out.push(b as char)
            }
            _ if s % 5 == 0 => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn urlencoded_built() -> BoxedStrategy<(String, Pairs)> {
    (
        vec((form_name(), form_value(), any::<bool>()), 0..6),
        vec(any::<u8>(), 1..8),
        0usize..3,
    )
        .prop_map(|(pairs, style, empties)| {
            let mut parts = Vec::new();
            let mut built = Vec::new();
            for (name, value, bare) in pairs {
                let n = url_encode(name.as_bytes(), &style);
                // An empty pair reads as nothing: "=" is the empty name.
                parts.push(if value.is_empty() && bare && !n.is_empty() {
                    n
                } else {
                    format!("{n}={}", url_encode(&value, &style))
                });
                built.push((name.into_bytes(), value));
            }
            let mut text = parts.join("&");
            text.push_str(&"&".repeat(empties));
            (text, built)
        })
        .boxed()
}

const URLENCODED: &[&str] = &[
    "application/x-www-form-urlencoded",
    "APPLICATION/X-WWW-FORM-URLENCODED",
    "application/x-www-form-urlencoded; charset=utf-8",
    " application/x-www-form-urlencoded ;",
];
const BOUNDARY_CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=?";

fn multipart_built() -> BoxedStrategy<FormCase> {
    let part = (
        prop_oneof![
            3 => select(&["content", "uuid", "signature"][..]).prop_map(str::to_owned),
            1 => string_of("abc_-0 ", 0..8),
        ],
        option::weighted(0.2, string_of("abc.txt", 1..8)),
        option::weighted(0.2, select(&["text/plain", "application/octet-stream"][..])),
        form_value(),
    );
    (
        string_of(BOUNDARY_CHARS, 1..71),
        any::<bool>(),
        select(&["multipart/form-data", "Multipart/Form-Data"][..]),
        vec(part, 0..5),
        option::weighted(0.2, string_of("preamble \r\n", 0..20)),
        option::weighted(0.2, string_of("epilogue \r\n-", 0..20)),
        option::weighted(0.3, vec(edit(), 1..4)),
    )
        .prop_map(
            |(boundary, quote, mime, parts, preamble, epilogue, edits)| {
                let needs_quotes = boundary.contains(|c: char| "()<>@,;:\\\"/[]?=".contains(c));
                let content_type = if quote || needs_quotes {
                    format!("{mime}; boundary=\"{boundary}\"")
                } else {
                    format!("{mime}; boundary={boundary}")
                };
                let delimiter = format!("\r\n--{boundary}");
                let mut body = Vec::new();
                if let Some(p) = &preamble {
                    body.extend_from_slice(p.as_bytes());
                    body.extend_from_slice(b"\r\n");
                }
                let mut built = Vec::new();
                let mut well_formed = true;
                for (name, filename, ctype, value) in parts {
                    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                    let mut disposition =
                        format!("Content-Disposition: form-data; name=\"{name}\"");
                    if let Some(f) = filename {
                        disposition.push_str(&format!("; filename=\"{f}\""));
                    }
                    body.extend_from_slice(disposition.as_bytes());
                    body.extend_from_slice(b"\r\n");
                    if let Some(t) = ctype {
                        body.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
                    }
                    body.extend_from_slice(b"\r\n");
                    well_formed &= !value
                        .windows(delimiter.len())
                        .any(|w| w == delimiter.as_bytes());
                    body.extend_from_slice(&value);
                    body.extend_from_slice(b"\r\n");
                    built.push((name.into_bytes(), value));
                }
                body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
                if let Some(e) = &epilogue {
                    body.extend_from_slice(e.as_bytes());
                }
                if let Some(edits) = &edits {
                    apply_edits(&mut body, edits, &[delimiter.clone().into_bytes()]);
                    well_formed = false;
                }
                FormCase {
                    content_type: Some(content_type),
                    body: Blob(body),
                    query: None,
                    built: well_formed.then_some(built),
                }
            },
        )
        .boxed()
}

fn query() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        2 => Just(None),
        2 => urlencoded_built().prop_map(|(q, _)| Some(q)),
        1 => string_of("%+&=aZ09é", 0..24).prop_map(Some),
    ]
    .boxed()
}

fn form_case() -> BoxedStrategy<FormCase> {
    prop_oneof![
        4 => (select(URLENCODED), urlencoded_built(), query()).prop_map(|(ct, (body, built), query)| {
            FormCase {
                content_type: Some(ct.to_owned()),
                body: Blob(body.into_bytes()),
                query,
                built: Some(built),
            }
        }),
        2 => (
            select(URLENCODED),
            prop_oneof![
                vec(select(b"%+&=09afAFgG \xff".to_vec()), 0..48),
                vec(any::<u8>(), 0..48),
            ],
            query(),
        )
            .prop_map(|(ct, body, query)| FormCase {
                content_type: Some(ct.to_owned()),
                body: Blob(body),
                query,
                built: None,
            }),
        4 => (multipart_built(), query()).prop_map(|(case, query)| FormCase { query, ..case }),
        2 => (
            option::of(prop_oneof![
                select(&[
                    "multipart/form-data",
                    "multipart/form-data; boundary=",
                    "multipart/form-data; boundary=\"\"",
                    "multipart/form-data; boundary=a; boundary=b",
                    "multipart/form-data; boundary=\"unterminated",
                    "multipart/mixed; boundary=x",
                    "text/plain",
                    ";",
                    "",
                ][..])
                .prop_map(str::to_owned),
                string_of("multipart/form-data; boundary=\"x\\ ", 0..40),
                any_string(0..20),
            ]),
            prop_oneof![
                vec(any::<u8>(), 0..200),
                vec(select(b"--x\r\n\"=;: ab".to_vec()), 0..200),
            ],
            query(),
        )
            .prop_map(|(content_type, body, query)| FormCase {
                content_type,
                body: Blob(body),
                query,
                built: None,
            }),
    ]
    .boxed()
}

/// Go's urlencoded rules as the agent applies them, on raw bytes.
fn model_urlencoded(input: &[u8]) -> Pairs {
    fn decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
            match s[i] {
                b'+' => out.push(b' '),
                // A '%' not followed by two hex digits stands for itself.
                b'%' => match (
                    s.get(i + 1).and_then(|b| hex(*b)),
                    s.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        out
    }
    input
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(eq) => (decode(&p[..eq]), decode(&p[eq + 1..])),
            None => (decode(p), Vec::new()),
        })
        .collect()
}

fn first<'a>(pairs: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

#[test]
fn form() {
    fuzz("form", form_case(), |case, stats| {
        let mut headers = HeaderMap::new();
        if let Some(ct) = &case.content_type {
            if let Ok(v) = HeaderValue::from_str(ct) {
                headers.insert(CONTENT_TYPE, v);
            }
        }
        let mime = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let parsed = futures::executor::block_on(Form::parse(
            &headers,
            Bytes::from(case.body.0.clone()),
            case.query.as_deref(),
        ));
        let form = match parsed {
            Ok(f) => f,
            Err(e) => {
                stats.hit("refused");
                prop_assert_eq!(
                    mime.as_str(),
                    "multipart/form-data",
                    "only multipart fails: {}",
                    e
                );
                prop_assert!(case.built.is_none(), "refused a well-formed body: {}", e);
                return Ok(());
            }
        };
        stats.hit("parsed");
        // Every field the body and the query hold, the body's first.
        let body_pairs = match mime.as_str() {
            "application/x-www-form-urlencoded" => Some(model_urlencoded(&case.body.0)),
            "multipart/form-data" => case.built.clone(),
            _ => Some(Vec::new()),
        };
        let Some(mut expected) = body_pairs else {
            return Ok(());
        };
        if mime == "application/x-www-form-urlencoded" {
            if let Some(built) = &case.built {
                // The decoder undoes an independent encoder.
                stats.hit("urlencoded built");
                prop_assert_eq!(&expected, built);
            }
        } else if mime == "multipart/form-data" {
            stats.hit("multipart built");
        }
        if let Some(q) = &case.query {
            expected.extend(model_urlencoded(q.as_bytes()));
        }
        for (name, _) in &expected {
            if let Ok(n) = std::str::from_utf8(name) {
                prop_assert_eq!(form.get(n), first(&expected, name), "field {:?}", n);
            }
        }
        if first(&expected, b"missing\x01").is_none() {
            prop_assert_eq!(form.get("missing\u{1}"), None);
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 3. Request paths and token extraction.

const PATH_PIECES: &[&str] = &[
    "/",
    ".",
    "%",
    "~",
    "//",
    "..",
    "%2F",
    "%2e",
    "%00",
    "?",
    "#",
    ";",
    "é",
    "acMetadata",
    "v1",
    "pod",
    "apps",
    "annotations",
    "hmac",
    "sign",
    "verify",
    "image",
    "id",
    "manifest",
    "uuid",
    "pods",
    "health",
    "metrics",
    "info",
    "keys",
    "rotate",
];
const TOKEN_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

fn token() -> BoxedStrategy<String> {
    prop_oneof![
        4 => string_of(TOKEN_CHARS, 22..257),
        2 => string_of(TOKEN_CHARS, 0..300),
        1 => string_of("aZ9%/.é", 0..40),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
enum PathPiece {
    Fixed(&'static str),
    Token(String),
    Chars(String),
}

fn path_piece() -> BoxedStrategy<PathPiece> {
    prop_oneof![
        8 => select(PATH_PIECES).prop_map(PathPiece::Fixed),
        2 => token().prop_map(PathPiece::Token),
        1 => any_string(0..6).prop_map(PathPiece::Chars),
    ]
    .boxed()
}

fn piece_text(p: &PathPiece) -> &str {
    match p {
        PathPiece::Fixed(s) => s,
        PathPiece::Token(s) | PathPiece::Chars(s) => s,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    Public(Option<String>, &'static str, Vec<String>),
    Registration(&'static str),
}

#[derive(Clone, Debug)]
struct PathCase {
    path: String,
    expect: Expect,
}

/// An endpoint's label and names, owned.
fn route_parts<'a>(r: &Route<'a>) -> (&'static str, Vec<&'a str>) {
    let names = match r {
        Route::PodAnnotation(n) => vec![*n],
        Route::AppAnnotations(a) | Route::AppImageManifest(a) | Route::AppImageId(a) => vec![*a],
        Route::AppAnnotation(a, n) => vec![*a, *n],
        _ => vec![],
    };
    (r.label(), names)
}

/// The path `route` parsed, rebuilt.
fn render(token: Option<&str>, label: &str, names: &[&str]) -> String {
    let mut s = String::from("/");
    if let Some(t) = token {
        s.push_str(t);
        s.push('/');
    }
    s.push_str("acMetadata/v1/");
    let mut names = names.iter();
    for part in label.split('/') {
        if part.starts_with('{') {
            s.push_str(names.next().expect("a name per placeholder"));
        } else {
            s.push_str(part);
        }
        s.push('/');
    }
    s.pop();
    s
}

const PUBLIC_LABELS: &[&str] = &[
    "pod/annotations",
    "pod/annotations/{name}",
    "pod/manifest",
    "pod/uuid",
    "pod/hmac/sign",
    "pod/hmac/verify",
    "apps/{app}/annotations",
    "apps/{app}/annotations/{name}",
    "apps/{app}/image/manifest",
    "apps/{app}/image/id",
];
const REGISTRATION_LABELS: &[&str] = &[
    "health",
    "metrics",
    "info",
    "pods",
    "pods/{uuid}",
    "pods/{uuid}/{app}",
    "keys",
    "keys/rotate",
    "unknown",
];

fn public_path() -> BoxedStrategy<PathCase> {
    (
        option::weighted(0.9, token()),
        select(PUBLIC_LABELS),
        string_of("abz09-._~%", 1..12),
        string_of("abz09-._~/%", 1..24),
    )
        .prop_map(|(token, label, app, name)| {
            let names: Vec<&str> = match label.matches('{').count() {
                0 => vec![],
                1 if label.starts_with("apps") => vec![&app],
                1 => vec![&name],
                _ => vec![&app, &name],
            };
            let path = render(token.as_deref(), label, &names);
            // A token with a '/' (or "acMetadata", which reads as no
            // token) does not come back as it went in.
            let expect = match &token {
                Some(t) if t.contains('/') || t == "acMetadata" => Expect::Nothing,
                _ => Expect::Public(
                    token.clone(),
                    label,
                    names.iter().map(|s| s.to_string()).collect(),
                ),
            };
            PathCase { path, expect }
        })
        .boxed()
}

fn registration_path() -> BoxedStrategy<PathCase> {
    (
        1usize..4,
        select(&REGISTRATION_LABELS[..8]),
        string_of("0123456789abcdef-.%", 0..40),
        string_of("abz09-", 0..10),
    )
        .prop_map(|(slashes, label, uuid, app)| {
            let path = "/".repeat(slashes) + &label.replace("{uuid}", &uuid).replace("{app}", &app);
            PathCase {
                path,
                expect: Expect::Registration(label),
            }
        })
        .boxed()
}

fn path_case() -> BoxedStrategy<PathCase> {
    let edited = |base: BoxedStrategy<PathCase>| {
        (
            base,
            vec((any::<Index>(), path_piece(), any::<bool>()), 1..4),
        )
            .prop_map(|(case, edits)| {
                let mut chars: Vec<char> = case.path.chars().collect();
                for (at, piece, delete) in edits {
                    let at = at.index(chars.len() + 1);
                    if delete && at < chars.len() {
                        let n = piece_text(&piece).chars().count().max(1);
                        chars.drain(at..(at + n).min(chars.len()));
                    } else {
                        chars.splice(at..at, piece_text(&piece).chars());
                    }
                }
                PathCase {
                    path: chars.into_iter().collect(),
                    expect: Expect::Nothing,
                }
            })
    };
    prop_oneof![
        4 => vec(path_piece(), 0..24).prop_map(|pieces| PathCase {
            path: pieces.iter().map(piece_text).collect(),
            expect: Expect::Nothing,
        }),
        4 => public_path(),
        3 => edited(public_path()),
        2 => registration_path(),
        1 => edited(registration_path()),
        1 => any_string(0..64).prop_map(|path| PathCase { path, expect: Expect::Nothing }),
    ]
    .boxed()
}

const MIN_TOKEN_LEN: usize = 22;

#[test]
fn paths() {
    fuzz("paths", path_case(), |case, stats| {
        let p = case.path.as_str();
        let parsed = route(p);
        match &parsed {
            Some((token, r)) => {
                stats.hit("routed");
                if let Some(t) = token {
                    // The token is a slice of the path itself.
                    let (start, end) = (p.as_ptr() as usize, p.as_ptr() as usize + p.len());
                    let at = t.as_ptr() as usize;
                    prop_assert!(start <= at && at + t.len() <= end, "token outside the path");
                    prop_assert!(p.contains(t));
                    prop_assert!(!t.contains('/'));
                }
                let (label, names) = route_parts(r);
                // An annotation name is never empty (`.../annotations/` is
                // no endpoint); an app name may be, and is then refused as
                // not an AC name (400), as rkt did.
                if label.ends_with("{name}") {
                    prop_assert!(!names[names.len() - 1].is_empty());
                }
                prop_assert_eq!(render(*token, label, &names), p, "route round-trips");
                prop_assert_eq!(endpoint(p), label);
            }
            None => prop_assert_eq!(endpoint(p), "unknown"),
        }
        match &case.expect {
            Expect::Public(token, label, names) => {
                let got = parsed.as_ref().map(|(t, r)| {
                    let (l, n) = route_parts(r);
                    (
                        t.map(str::to_owned),
                        l,
                        n.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    )
                });
                prop_assert_eq!(got, Some((token.clone(), *label, names.clone())));
            }
            Expect::Registration(label) => {
                prop_assert_eq!(registration::endpoint(p), *label)
            }
            Expect::Nothing => {}
        }
        let reg = registration::endpoint(p);
        prop_assert!(REGISTRATION_LABELS.contains(&reg));
        if reg != "unknown" {
            stats.hit("registration routed");
            // Its label has as many segments as the path, past the slashes.
            prop_assert_eq!(
                p.trim_start_matches('/').split('/').count(),
                reg.split('/').count()
            );
        }

        // No token in logs: every segment of 22 bytes or more is `***`,
        // the others are kept, wherever they stand.
        let shown = Redacted(p).to_string();
        let (segs_in, segs_out): (Vec<&str>, Vec<&str>) =
            (p.split('/').collect(), shown.split('/').collect());
        prop_assert_eq!(segs_in.len(), segs_out.len(), "{:?} -> {:?}", p, shown);
        for (a, b) in segs_in.iter().zip(&segs_out) {
            if a.len() >= MIN_TOKEN_LEN {
                prop_assert_eq!(*b, "***");
            } else {
                prop_assert_eq!(a, b);
            }
            prop_assert!(b.chars().count() < MIN_TOKEN_LEN);
        }
        for seg in segs_in
            .iter()
            .filter(|s| s.chars().count() >= MIN_TOKEN_LEN)
        {
            stats.hit("segments redacted");
            prop_assert!(!shown.contains(seg), "{:?} shows {:?}", shown, seg);
            // Nor any 22-character piece of it.
            let chars: Vec<char> = seg.chars().collect();
            let piece: String = chars[chars.len() - MIN_TOKEN_LEN..].iter().collect();
            prop_assert!(!shown.contains(&piece), "{:?} shows {:?}", shown, piece);
        }
        if let Some((Some(t), _)) = &parsed {
            if t.len() >= MIN_TOKEN_LEN {
                prop_assert!(!shown.contains(t), "the token reaches the log: {:?}", shown);
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 4. The persisted-state reader.

fn hex_token() -> BoxedStrategy<String> {
    prop_oneof![
        6 => vec(any::<u8>(), 32).prop_map(hex::encode),
        1 => vec(any::<u8>(), 32).prop_map(hex::encode_upper),
        1 => (vec(any::<u8>(), 32), vec(any::<bool>(), 64)).prop_map(|(b, up)| {
            hex::encode(b)
                .chars()
                .zip(up)
                .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                .collect()
        }),
        2 => string_of("0123456789abcdefABCDEFgx é", 60..68),
        1 => Just("é".repeat(32)),
        1 => any_string(0..70),
    ]
    .boxed()
}

fn uuid_of(bytes: &[u8]) -> PodUuid {
    let mut b = bytes.to_vec();
    if b.iter().all(|x| *x == 0) {
        b[15] = 1;
    }
    PodUuid::parse(&hex::encode(b)).expect("32 hex digits, not all zero")
}

/// A valid record (possibly with an unusable token digest), serialized.
fn record() -> BoxedStrategy<(PodUuid, Blob)> {
    // StoredNetns is not Clone: drawn as its parts, built below.
    let netns = (
        0u8..4,
        string_of("/proc1/netns-abc", 0..30),
        any::<(u64, u64)>(),
        option::of(any::<u64>()),
        option::of(string_of("0123456789abcdef-", 0..36)),
    );
    let manifest = prop_oneof![
        any::<Index>().prop_map(|i| {
            String::from_utf8_lossy(&fixtures()[i.index(fixtures().len())]).into_owned()
        }),
        any_string(0..40),
    ];
    (
        (
            prop_oneof![4 => Just(2u32), 1 => any::<u32>()],
            vec(any::<u8>(), 16),
            hex_token(),
            manifest,
            btree_map(
                select(VALID_NAMES).prop_map(str::to_owned),
                any_string(0..20),
                0..3,
            ),
        ),
        (
            netns,
            any::<u64>(),
            option::of(any::<u32>()),
            option::of(any::<i32>()),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (version, uuid, token_sha256, manifest, apps),
                (netns, registered_at, uid, pid, rkt_pod),
            )| {
                let uuid = uuid_of(&uuid);
                let (kind, path, (dev, ino), cookie, boot_id) = netns;
                let netns = match kind {
                    0 | 1 => StoredNetns::Known {
                        path: PathBuf::from(path),
                        dev,
                        ino,
                        cookie,
                        boot_id,
                    },
                    2 => StoredNetns::HostNetwork,
                    _ => StoredNetns::Pending,
                };
                let r = Record {
                    version,
                    uuid,
                    token_sha256,
                    manifest,
                    apps,
                    netns,
                    registered_at,
                    registrant: Registrant { uid, pid },
                    rkt_pod,
                };
                (
                    uuid,
                    Blob(serde_json::to_vec(&r).expect("a record serializes")),
                )
            },
        )
        .boxed()
}

const RECORD_KEYS: &[&str] = &[
    "version",
    "uuid",
    "token_sha256",
    "manifest",
    "apps",
    "netns",
    "kind",
    "path",
    "dev",
    "ino",
    "cookie",
    "boot_id",
    "registered_at",
    "registrant",
    "uid",
    "pid",
    "rkt_pod",
];

/// A record edited at the JSON level: keys and values from its vocabulary.
fn record_value_edit() -> BoxedStrategy<ValueEdit> {
    let value = prop_oneof![
        3 => json_leaf(),
        1 => select(&["known", "host-network", "pending", "Known", ""][..]).prop_map(Value::from),
        1 => uuid_text().prop_map(Value::from),
        1 => hex_token().prop_map(Value::from),
        1 => prop_oneof![Just(-1i64), Just(i64::MAX), Just(1 << 32)].prop_map(Value::from),
        1 => json_any(),
    ]
    .boxed();
    let key = select(RECORD_KEYS).prop_map(str::to_owned);
    prop_oneof![
        3 => (any::<Index>(), value.clone()).prop_map(|(i, v)| ValueEdit::Replace(i, v)),
        2 => any::<Index>().prop_map(ValueEdit::Remove),
        1 => (any::<Index>(), key.clone(), value).prop_map(|(i, k, v)| ValueEdit::Add(i, k, v)),
        1 => (any::<Index>(), key).prop_map(|(i, k)| ValueEdit::Duplicate(i, k)),
    ]
    .boxed()
}

/// Record bytes: pristine, edited as JSON, edited as bytes, or noise.
/// `pristine` says the bytes are a record's serialization as written.
fn record_bytes() -> BoxedStrategy<(PodUuid, Blob, bool)> {
    prop_oneof![
        3 => record().prop_map(|(u, b)| (u, b, true)),
        3 => (record(), vec(record_value_edit(), 1..4)).prop_map(|((u, b), edits)| {
            let mut v: Value = serde_json::from_slice(&b.0).expect("a record is JSON");
            apply_value_edits(&mut v, &edits);
            (u, Blob(serde_json::to_vec(&v).expect("serializes")), false)
        }),
        2 => (record(), vec(edit(), 1..4)).prop_map(|((u, mut b), edits)| {
            apply_edits(&mut b.0, &edits, fixtures());
            (u, b, false)
        }),
        1 => (any::<[u8; 16]>(), vec(any::<u8>(), 0..128))
            .prop_map(|(u, b)| (uuid_of(&u), Blob(b), false)),
    ]
    .boxed()
}

fn check_record(bytes: &[u8], pristine: bool, stats: &Stats) -> Result<(), TestCaseError> {
    match serde_json::from_slice::<Record>(bytes) {
        Ok(r) => {
            stats.hit("records read");
            let hex_ok =
                r.token_sha256.len() == 64 && r.token_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            let digest = r.token_digest();
            prop_assert_eq!(
                digest.is_some(),
                hex_ok,
                "token_digest of {:?}",
                r.token_sha256
            );
            if let Some(d) = digest {
                stats.hit("token digests");
                prop_assert_eq!(hex::encode(d), r.token_sha256.to_ascii_lowercase());
            }
            prop_assert_eq!(PodUuid::parse(&r.uuid.to_string()).ok(), Some(r.uuid));
            let again = serde_json::to_vec(&r).expect("serializes");
            let r2: Record = serde_json::from_slice(&again)
                .map_err(|e| TestCaseError::fail(format!("a written record does not read: {e}")))?;
            prop_assert_eq!(
                Blob(serde_json::to_vec(&r2).expect("serializes")),
                Blob(again.clone()),
                "write, read, write is stable"
            );
            if pristine {
                prop_assert_eq!(
                    Blob(again),
                    Blob(bytes.to_vec()),
                    "read then write is identity"
                );
            }
        }
        Err(e) => {
            prop_assert!(!pristine, "a written record does not read: {}", e);
        }
    }
    Ok(())
}

#[test]
fn records() {
    fuzz("records", record_bytes(), |(_, blob, pristine), stats| {
        check_record(&blob.0, *pristine, stats)
    });
}

#[derive(Clone, Debug)]
enum Entry {
    File(Blob),
    Dir,
}

/// One directory entry of the runtime directory.
fn store_entry() -> BoxedStrategy<(String, Entry)> {
    let name = |u: &PodUuid, how: u8, other: &PodUuid, salt: &str| {
        let canon = u.to_string();
        match how {
            0..=4 => format!("{canon}.json"),
            5 => format!("{}.json", canon.to_ascii_uppercase()),
            6 => format!("{}.json", canon.replace('-', "")),
            7 => format!("-{canon}--.json"),
            8 => format!("{other}.json"),
            9 => format!(".{canon}.json.tmp-{salt}"),
            10 => format!("{canon}.json.bak"),
            11 => canon,
            12 => ".json".to_owned(),
            _ => format!("{salt}.json"),
        }
    };
    (
        record_bytes(),
        0u8..14,
        any::<[u8; 16]>(),
        string_of("abcXYZ019._-", 0..12),
        prop_oneof![12 => Just(false), 1 => Just(true)],
    )
        .prop_map(move |((uuid, blob, _), how, other, salt, dir)| {
            let name = name(&uuid, how, &uuid_of(&other), &salt);
            (name, if dir { Entry::Dir } else { Entry::File(blob) })
        })
        .boxed()
}

fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn clear_dir(dir: &Path) {
    for e in std::fs::read_dir(dir)
        .expect("list the test directory")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("remove a test directory");
        } else {
            std::fs::remove_file(&p).expect("remove a test file");
        }
    }
}

#[test]
fn pod_store() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("runtime");
    let store = PodStore::open(&dir, "boot".to_owned()).expect("open the store");
    fuzz("pod-store", vec(store_entry(), 0..6), |entries, stats| {
        clear_dir(&dir);
        let mut names = HashSet::new();
        let mut expected = Vec::new();
        let mut kept = Vec::new();
        for (name, entry) in entries {
            if !names.insert(name.clone()) {
                continue;
            }
            let path = dir.join(name);
            match entry {
                Entry::Dir => {
                    std::fs::create_dir(&path).expect("create a test directory");
                    kept.push(path);
                }
                Entry::File(blob) => {
                    std::fs::write(&path, &blob.0).expect("write a test file");
                    if is_temporary(name) {
                        continue;
                    }
                    kept.push(path);
                    let Some(stem) = name.strip_suffix(".json") else {
                        continue;
                    };
                    if let Ok(r) = serde_json::from_slice::<Record>(&blob.0) {
                        if PodUuid::parse(stem).ok() == Some(r.uuid) {
                            expected.push(r.uuid);
                        }
                    }
                }
            }
        }
        let mut got: Vec<PodUuid> = store.load().iter().map(|r| r.uuid).collect();
        got.sort();
        expected.sort();
        for _ in &got {
            stats.hit("records loaded");
        }
        prop_assert_eq!(got, expected, "the records loaded");
        for e in std::fs::read_dir(&dir).expect("list").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            prop_assert!(
                !is_temporary(&name) || e.path().is_dir(),
                "temporary file {} left",
                name
            );
        }
        for p in &kept {
            prop_assert!(p.exists(), "{} was removed", p.display());
        }
        Ok(())
    });
    // A runtime directory that has gone is no records, not a panic.
    std::fs::remove_dir_all(&dir).expect("remove the runtime directory");
    assert!(store.load().is_empty());
}

// ---------------------------------------------------------------------------
// CSRs (SPEC §9): a pod's PEM PKCS#10 request, mutated.

/// Valid requests, one per key kind rcgen makes (RSA comes from OpenSSL in
/// `svids.rs`), and their keys: the only keys a mutated request may yield,
/// since any other would be a signature forged by the mutation.
fn csr_seeds() -> &'static [(Vec<u8>, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        use rcgen::PublicKeyData;
        [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ]
        .into_iter()
        .map(|alg| {
            let key = rcgen::KeyPair::generate_for(alg).expect("a key");
            let mut params =
                rcgen::CertificateParams::new(vec!["x.example".to_owned()]).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "fuzz");
            let der = params
                .serialize_request(&key)
                .expect("a CSR")
                .der()
                .to_vec();
            (der, key.subject_public_key_info())
        })
        .collect()
    })
}

fn pem_block(label: &str, der: &[u8]) -> Vec<u8> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        STANDARD.encode(der)
    )
    .into_bytes()
}

/// A seed's DER mutated, then wrapped in PEM (mostly), or PEM text itself
/// mutated.
fn csr_case() -> BoxedStrategy<(usize, Vec<Edit>, u8)> {
    (0..csr_seeds().len(), vec(edit(), 0..6), any::<u8>()).boxed()
}

#[test]
fn csrs() {
    let donors: Vec<Vec<u8>> = csr_seeds().iter().map(|(d, _)| d.clone()).collect();
    fuzz("csrs", csr_case(), |(seed, edits, how), stats| {
        let (der, _) = &csr_seeds()[*seed];
        let body = match how % 4 {
            // Mutated DER in a proper block.
            0 | 1 => {
                let mut d = der.clone();
                apply_edits(&mut d, edits, &donors);
                pem_block("CERTIFICATE REQUEST", &d)
            }
            // Mutated PEM text.
            2 => {
                let mut p = pem_block("CERTIFICATE REQUEST", der);
                apply_edits(&mut p, edits, &donors);
                p
            }
            // Raw bytes, no PEM at all.
            _ => {
                let mut d = der.clone();
                apply_edits(&mut d, edits, &donors);
                d
            }
        };
        match rkt_mds::svid::csr::public_key(&body) {
            Ok(spki) => {
                stats.hit("accepted");
                use rcgen::PublicKeyData;
                let key = spki.subject_public_key_info();
                prop_assert!(
                    csr_seeds().iter().any(|(_, k)| *k == key),
                    "a mutated request yielded a key no seed signed for"
                );
            }
            Err(e) => stats.hit(match e {
                rkt_mds::svid::csr::CsrError::NotPem => "not-pem",
                rkt_mds::svid::csr::CsrError::Malformed => "malformed",
                rkt_mds::svid::csr::CsrError::Signature => "signature",
                rkt_mds::svid::csr::CsrError::Key(_) => "key",
            }),
        }
        Ok(())
    });
}
