//! Starts or stops the one PostgreSQL server a test run shares.
//!   signet-test-postgres start DIR   # prints the admin URL for SIGNET_TEST_PG
//!   signet-test-postgres stop DIR
//! `start` leaves the server running; `stop` stops it and removes DIR.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("start"), Some(dir)) => {
            let dir = PathBuf::from(dir);
            let server = signet_test_postgres::Server::start(&dir);
            std::fs::write(dir.join("pid"), server.pid().to_string()).unwrap();
            println!("{}", server.url("postgres"));
            // The server outlives this process; `stop` ends it by its PID.
            std::mem::forget(server);
            std::process::ExitCode::SUCCESS
        }
        (Some("stop"), Some(dir)) => {
            let dir = PathBuf::from(dir);
            if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
                let pid = pid.trim().to_owned();
                let _ = std::process::Command::new("kill")
                    .args(["-INT", &pid])
                    .status();
                for _ in 0..600 {
                    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: signet-test-postgres start|stop DIR");
            std::process::ExitCode::from(2)
        }
    }
}
