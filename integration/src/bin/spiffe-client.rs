//! A SPIFFE workload, for the tests: rust-spiffe's Workload API client
//! (no code of ours in between) asks `SPIFFE_ENDPOINT_SOCKET` for its
//! X.509-SVIDs and prints their SPIFFE IDs, one per line; on a refusal it
//! prints the error and exits 1 (2 when it cannot connect or gets no
//! answer within 30 s). Run it inside a pod's namespace (`ip netns exec`):
//! it is the process the agent attests.
//!
//! With `SPIFFE_CLIENT_STDIN` set it makes no connection of its own: its
//! standard input is a Unix stream already connected to the Workload API
//! (inetd's convention), made by another process, and the client speaks
//! over that. The attack tests use it for a connection that outlives its
//! maker or that was made from another namespace. Standard input, not any
//! descriptor number: fd 0 is the one a program may adopt without
//! `unsafe`.

use std::{
    io,
    os::{fd::AsFd, unix::net::UnixStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use spiffe::WorkloadApiClient;

/// The longest the client waits for its SVIDs.
const LIMIT: Duration = Duration::from_secs(30);

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(async {
        let client = match connect().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect: {e}");
                return 2;
            }
        };
        match tokio::time::timeout(LIMIT, client.fetch_all_x509_svids()).await {
            Ok(Ok(svids)) => {
                for s in svids {
                    println!("{}", s.spiffe_id());
                }
                0
            }
            Ok(Err(e)) => {
                eprintln!("{e}");
                1
            }
            Err(_) => {
                eprintln!("no answer within {LIMIT:?}");
                2
            }
        }
    });
    std::process::exit(code);
}

/// A client over `SPIFFE_ENDPOINT_SOCKET`, or over standard input.
async fn connect() -> Result<WorkloadApiClient, String> {
    if std::env::var_os("SPIFFE_CLIENT_STDIN").is_none() {
        return WorkloadApiClient::connect_env()
            .await
            .map_err(|e| e.to_string());
    }
    let stream = inherited().map_err(|e| format!("standard input: {e}"))?;
    // The channel's connector hands out the one stream once: a channel
    // that loses it cannot make another connection.
    let slot = Arc::new(Mutex::new(Some(stream)));
    let channel = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let stream = slot.lock().expect("the stream's slot").take();
            async move {
                let stream = stream
                    .ok_or_else(|| io::Error::other("the inherited connection is used up"))?;
                let stream = tokio::net::UnixStream::from_std(stream)?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| e.to_string())?;
    let endpoint =
        spiffe::transport::Endpoint::parse("unix:///dev/stdin").map_err(|e| e.to_string())?;
    Ok(WorkloadApiClient::new_with_channel(endpoint, channel))
}

/// Standard input as a Unix stream, if it is one.
fn inherited() -> io::Result<UnixStream> {
    let stdin = io::stdin();
    let socket = socket2::SockRef::from(&stdin);
    if socket.domain()? != socket2::Domain::UNIX || socket.r#type()? != socket2::Type::STREAM {
        return Err(io::Error::other("not a Unix stream socket"));
    }
    let stream = UnixStream::from(stdin.as_fd().try_clone_to_owned()?);
    stream.set_nonblocking(true)?;
    Ok(stream)
}
