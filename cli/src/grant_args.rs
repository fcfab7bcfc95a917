//! The --allow-* flags shared by commands that run skills, and their
//! translation into a `Grant`.

use anyhow::{Context, Result, bail};
use clap::Args;
use coderclaw_core::units::{parse_duration, parse_size};
use coderclaw_host::{Access, Grant, GrantBuilder};
use std::time::Duration;

/// Capabilities granted to the run. Nothing is granted unless named here.
#[derive(Args, Debug, Clone, Default)]
pub struct GrantArgs {
    /// Let the skill read DIR. Written HOST or HOST::GUEST; the guest sees it
    /// at GUEST (default: the same path as given, so `.` stays `.`).
    #[arg(long = "allow-read", value_name = "DIR[::GUEST]")]
    pub read: Vec<String>,
    /// Let the skill read and write DIR (same form as --allow-read).
    #[arg(long = "allow-write", value_name = "DIR[::GUEST]")]
    pub write: Vec<String>,
    /// Allow outgoing HTTP to a destination: https://api.github.com,
    /// api.github.com (https), http://127.0.0.1:8080, https://*.example.com.
    #[arg(long = "allow-http", value_name = "HOST")]
    pub http: Vec<String>,
    /// Pass environment variable NAME (with its current value) to the skill.
    #[arg(long = "allow-env", value_name = "NAME")]
    pub env: Vec<String>,
    /// Let the skill run PROGRAM through shell.exec (dangerous). Exact name
    /// (looked up on PATH) or absolute path; arguments are never shell-expanded.
    #[arg(long = "allow-shell", value_name = "PROGRAM")]
    pub shell: Vec<String>,
    /// Wall-clock limit for the whole run.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
    pub timeout: Duration,
    /// Memory limit of the component.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size_arg)]
    pub memory: u64,
    /// Time limit of one shell.exec command.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration_arg)]
    pub shell_timeout: Duration,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

impl GrantArgs {
    pub fn builder(&self) -> Result<GrantBuilder> {
        let mut b = Grant::builder().timeout(self.timeout).memory(self.memory).shell_timeout(self.shell_timeout);
        for (spec, access) in
            self.read.iter().map(|s| (s, Access::Read)).chain(self.write.iter().map(|s| (s, Access::ReadWrite)))
        {
            let (host, guest) = spec.split_once("::").unwrap_or((spec, spec));
            if !std::path::Path::new(host).is_dir() {
                bail!("cannot grant {host:?}: it is not an existing directory");
            }
            b = b.dir(host, guest, access);
        }
        for pattern in &self.http {
            b = b.http(pattern)?;
        }
        for name in &self.env {
            let value = std::env::var(name).with_context(|| {
                format!("cannot grant environment variable {name}: it is not set (or not UTF-8) here")
            })?;
            b = b.env(name, value);
        }
        for program in &self.shell {
            b = b.shell(program);
        }
        Ok(b)
    }
}
