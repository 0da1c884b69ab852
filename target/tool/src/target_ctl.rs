//! `tessera target status|apply FILE|reload`: a standalone `tessera-target`'s control socket
//! (`tessera::control`; the protocol is in docs/reload.md).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tessera::control::{self, Request, Response, Status};

#[derive(Args, Debug, Clone)]
pub struct ControlArg {
    /// The target's control socket (its `--control`).
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "name")]
    pub control: Option<PathBuf>,
    /// The target's layout name: its socket is `<dir>/NAME.sock` (`<dir>`: $RUNTIME_DIRECTORY
    /// or /run/tessera), the default of a target started with `--config .../NAME.yaml`.
    #[arg(long, default_value = "default", global = true)]
    pub name: String,
}

impl ControlArg {
    fn path(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(|| {
            control::default_socket_path(Some(std::path::Path::new(&format!("{}.yaml", self.name))))
        })
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum TargetCmd {
    /// List listeners, subsystems, namespaces, controllers and connections.
    Status {
        /// Print the JSON status as the target sends it.
        #[arg(long)]
        json: bool,
    },
    /// Apply a layout file: the target serves what it declares, changing only the difference.
    /// A file with an error changes nothing. Later reloads re-read the target's own file.
    Apply { file: PathBuf },
    /// Make the target re-read its layout file and apply the difference (as SIGHUP does).
    Reload,
}

/// Runs one command; exit code 1 when the target refused it or could not be reached.
pub fn run(cmd: &TargetCmd, c: &ControlArg) -> ExitCode {
    let path = c.path();
    let req = match cmd {
        TargetCmd::Status { .. } => Request::Status,
        TargetCmd::Reload => Request::Reload,
        TargetCmd::Apply { file } => {
            let abs = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            match std::fs::read_to_string(&abs) {
                Ok(yaml) => Request::Apply {
                    source: abs.display().to_string(),
                    yaml,
                },
                Err(e) => {
                    eprintln!("tessera: {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let resp = match control::request(&path, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tessera: {e}");
            return ExitCode::FAILURE;
        }
    };
    match (cmd, resp) {
        (
            _,
            Response {
                ok: false, error, ..
            },
        ) => {
            eprintln!(
                "tessera: refused, nothing changed: {}",
                error.unwrap_or_default()
            );
            ExitCode::FAILURE
        }
        (
            TargetCmd::Status { json },
            Response {
                status: Some(s), ..
            },
        ) => {
            if *json {
                match serde_json::to_string_pretty(&s) {
                    Ok(t) => println!("{t}"),
                    Err(e) => {
                        eprintln!("tessera: JSON: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", human(&s));
            }
            ExitCode::SUCCESS
        }
        (_, Response { changes, .. }) => {
            let changes = changes.unwrap_or_default();
            if changes.is_empty() {
                println!("unchanged: the layout declares what the target serves");
            }
            for c in changes {
                println!("{c}");
            }
            ExitCode::SUCCESS
        }
    }
}

/// The status for a person at a terminal.
fn human(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "layout {}, generation {}, discovery GENCTR {}",
        s.config.as_deref().unwrap_or("(embedded default)"),
        s.generation,
        s.genctr
    );
    let listeners: Vec<String> = s.listeners.iter().map(ToString::to_string).collect();
    let _ = writeln!(o, "listeners: {}", listeners.join(", "));
    let ctrl_line = |o: &mut String, c: &control::ControllerStatus| {
        let queues: Vec<String> = c.io_queues.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            o,
            "    controller {}: host {}, I/O queues [{}], KATO {} ms",
            c.cntlid,
            c.hostnqn,
            queues.join(","),
            c.kato_ms
        );
    };
    for sub in &s.subsystems {
        let hosts = if sub.allow_any_host {
            "any host".to_string()
        } else {
            format!("hosts {}", sub.hosts.join(", "))
        };
        let _ = writeln!(o, "subsystem {} ({hosts})", sub.nqn);
        for n in &sub.namespaces {
            let _ = writeln!(
                o,
                "    namespace {}: {} bytes, {}-byte blocks, NGUID {}",
                n.nsid, n.size_bytes, n.block_size, n.nguid
            );
        }
        for c in &sub.controllers {
            ctrl_line(&mut o, c);
        }
    }
    if !s.discovery_controllers.is_empty() {
        let _ = writeln!(o, "discovery");
        for c in &s.discovery_controllers {
            ctrl_line(&mut o, c);
        }
    }
    let _ = writeln!(o, "connections: {}", s.connections.len());
    for c in &s.connections {
        let _ = writeln!(o, "    {} -> {} (reactor {})", c.peer, c.portal, c.reactor);
    }
    o
}
