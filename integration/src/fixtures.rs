//! The shared appc fixtures, read in place from `../shared/fixtures`.

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

pub fn read(rel: &str) -> Vec<u8> {
    let path = dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A pod fixture: manifest and its apps' image manifests.
pub struct PodFixture {
    pub manifest: &'static str,
    pub apps: &'static [(&'static str, &'static str)],
}

/// The web pod: two apps, slash-bearing annotation names, an override.
pub const WEB: PodFixture = PodFixture {
    manifest: "pods/web-pod.json",
    apps: &[
        ("web", "pods/web-image.json"),
        ("log-shipper", "pods/log-shipper-image.json"),
    ],
};

/// A pod manifest with no annotations, one app with an image of none.
pub const BARE: PodFixture = PodFixture {
    manifest: "pods/bare-pod.json",
    apps: &[("worker", "pods/worker-image.json")],
};

/// Every pod fixture with the apps that have an image manifest.
pub const PODS: &[PodFixture] = &[
    WEB,
    BARE,
    PodFixture {
        manifest: "appc-examples/pod_runtime.json",
        apps: &[("reduce-worker", "appc-examples/image.json")],
    },
];
