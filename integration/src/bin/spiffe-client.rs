//! A SPIFFE workload, for the tests: rust-spiffe's Workload API client
//! (no code of ours in between) asks `SPIFFE_ENDPOINT_SOCKET` for its
//! X.509-SVIDs and prints their SPIFFE IDs, one per line; on a refusal it
//! prints the error and exits 1. Run it inside a pod's namespace (`ip
//! netns exec`): it is the process the agent attests.

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(async {
        let client = match spiffe::WorkloadApiClient::connect_env().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect: {e}");
                return 2;
            }
        };
        match client.fetch_all_x509_svids().await {
            Ok(svids) => {
                for s in svids {
                    println!("{}", s.spiffe_id());
                }
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        }
    });
    std::process::exit(code);
}
