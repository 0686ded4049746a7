//! Pod set-up rate: how many `PodNet`s (namespace, veth pair, addresses,
//! links up) this harness creates and removes per second, one after the
//! other. What every namespace test pays per pod.

use std::time::{Duration, Instant};

use integration::PodNet;

use crate::check_interrupted;

/// Stops early past this, reporting what completed: the figure is a rate.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Creates and drops up to `count` pods sequentially and prints the rates.
pub fn measure(count: u32) -> Result<(), String> {
    if count == 0 {
        return Err("--setups needs at least one pod".into());
    }
    let started = Instant::now();
    let (mut done, mut in_setup, mut in_drop) = (0u32, Duration::ZERO, Duration::ZERO);
    while done < count && started.elapsed() < TIME_LIMIT {
        check_interrupted()?;
        let t = Instant::now();
        let pod = PodNet::new();
        let set_up = t.elapsed();
        drop(pod);
        in_drop += t.elapsed() - set_up;
        in_setup += set_up;
        done += 1;
    }
    let total = started.elapsed().as_secs_f64();
    let per_sec = |d: Duration| f64::from(done) / d.as_secs_f64();
    println!(
        "setups: {done} pods in {total:.2} s: {:.1} set-up+drop cycles/s \
         (set-up alone {:.1}/s, drop alone {:.1}/s)",
        f64::from(done) / total,
        per_sec(in_setup),
        per_sec(in_drop),
    );
    if done < count {
        eprintln!("bench: stopped after {TIME_LIMIT:?}: {done} of {count} pods");
    }
    Ok(())
}
