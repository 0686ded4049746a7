//! The subcommands, one file each, and how they talk to the agent. This
//! is the binary's edge: errors carry context for a person and end as exit
//! code 254 (verify: 2), except `serve`'s: 2 for a configuration error
//! (restarting cannot help), 1 for a failure that may pass.

pub mod agent;
pub mod audit;
pub mod bundle;
pub mod cluster;
pub mod completions;
pub mod jwks;
pub mod keys;
pub mod man;
pub mod register;
pub mod roles;
pub mod serve;
pub mod sign;
pub mod table;
pub mod token;
pub mod unregister;
pub mod verify;
pub mod verify_token;

/// A fatal error and the exit code it ends with.
pub struct Fatal {
    pub code: i32,
    pub error: anyhow::Error,
}

/// Exit code of a configuration error: systemd does not restart it.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code of a failure that may pass (systemd restarts it).
pub const EXIT_TRANSIENT: i32 = 1;

/// Which kind of fatal error a result's error is.
pub trait Fate<T> {
    fn config(self) -> Result<T, Fatal>;
    fn transient(self) -> Result<T, Fatal>;
}

impl<T, E: Into<anyhow::Error>> Fate<T> for Result<T, E> {
    fn config(self) -> Result<T, Fatal> {
        self.map_err(|e| Fatal {
            code: EXIT_CONFIG,
            error: e.into(),
        })
    }

    fn transient(self) -> Result<T, Fatal> {
        self.map_err(|e| Fatal {
            code: EXIT_TRANSIENT,
            error: e.into(),
        })
    }
}

/// An error and its causes on one line, each said once: a cause whose
/// text its parent already holds (thiserror's `{source}`) is not repeated.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
