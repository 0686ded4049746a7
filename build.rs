//! Build facts for `rkt-mds version`: the git commit (or
//! `RKT_MDS_GIT_COMMIT` when building from a tarball) and the target; and
//! the SPIFFE Workload API's gRPC server, described here in Rust
//! (tonic-build's manual mode) so that the build needs no protoc. Its
//! messages are `src/workload/messages.rs`.

use std::process::Command;

use tonic_build::manual::{Builder, Method, Service};

fn main() {
    workload_api();
    println!("cargo:rerun-if-env-changed=RKT_MDS_GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("RKT_MDS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RKT_MDS_GIT_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=RKT_MDS_TARGET={target}");
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// `SpiffeWorkloadAPI` of the SPIFFE Workload API standard (no package:
/// its paths are `/SpiffeWorkloadAPI/Method`), the methods this agent
/// serves.
fn workload_api() {
    let method = |name: &str, route: &str, input: &str, output: &str, stream: bool| {
        let m = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::workload::messages::{input}"))
            .output_type(format!("crate::workload::messages::{output}"))
            .codec_path("tonic_prost::ProstCodec");
        if stream { m.server_streaming() } else { m }.build()
    };
    let service = Service::builder()
        .name("SpiffeWorkloadAPI")
        .package("")
        .method(method(
            "fetch_x509_svid",
            "FetchX509SVID",
            "X509SvidRequest",
            "X509SvidResponse",
            true,
        ))
        .method(method(
            "fetch_x509_bundles",
            "FetchX509Bundles",
            "X509BundlesRequest",
            "X509BundlesResponse",
            true,
        ))
        .method(method(
            "fetch_jwt_svid",
            "FetchJWTSVID",
            "JwtSvidRequest",
            "JwtSvidResponse",
            false,
        ))
        .method(method(
            "fetch_jwt_bundles",
            "FetchJWTBundles",
            "JwtBundlesRequest",
            "JwtBundlesResponse",
            true,
        ))
        .method(method(
            "validate_jwt_svid",
            "ValidateJWTSVID",
            "ValidateJwtSvidRequest",
            "ValidateJwtSvidResponse",
            false,
        ))
        .build();
    Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}
