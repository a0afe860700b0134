//! Silo configuration: defaults that run locally with no file, a TOML file, then
//! `GRANARY_*` environment overrides, then command-line flags (applied by `cli`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Every setting of a silo. Durations are milliseconds so that the TOML key, the
/// environment variable and the value all say the unit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP gateway.
    pub listen: SocketAddr,
    /// Directory holding `<kind>.wasm` components.
    pub grains_dir: PathBuf,
    /// Directory of the sled database and the compile cache.
    pub data_dir: PathBuf,
    /// Where compiled components are cached; defaults to `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// An activation with no message for this long is deactivated.
    pub idle_timeout_ms: u64,
    /// Upper bound on live activations; lowered at start-up to what `vm.max_map_count` allows.
    pub max_activations: u32,
    /// Messages queued per activation before callers are refused with "overloaded".
    pub mailbox_capacity: usize,
    /// Deadline of one turn (the guest's share of a call).
    pub turn_timeout_ms: u64,
    /// Deadline of a call made through the gateway, queueing included.
    pub call_timeout_ms: u64,
    /// Largest request payload, call/send payload and reply, in bytes.
    pub max_payload_bytes: usize,
    /// Largest state a grain may write, in bytes.
    pub max_state_bytes: usize,
    /// Linear memory limit per activation, in bytes.
    pub memory_limit_bytes: usize,
    /// Bearer token for admin routes; without one they answer loopback clients only.
    pub admin_token: Option<String>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Whole-drain deadline: past it the silo flushes and exits non-zero. Keep it below
    /// Kubernetes' `terminationGracePeriodSeconds` minus `readiness_delay_ms`.
    pub grace_ms: u64,
    /// After readiness drops, keep serving this long (endpoints still route to the pod).
    pub readiness_delay_ms: u64,
    /// How long running turns may finish during a drain before they are interrupted.
    pub turn_grace_ms: u64,
    /// At start-up, how long to wait for another process to release the data directory.
    pub lock_wait_ms: u64,
    /// Stores up to this size are copied before they are opened, so that one refused as
    /// damaged is left exactly as found (sled's recovery rewrites a damaged log); 0 never copies.
    pub open_copy_max_mib: u64,
    /// Shortest reminder period (at least 100 ms); faster periodic work belongs in timers.
    pub min_reminder_period_ms: u64,
    /// Reminders one grain may hold.
    pub max_reminders_per_grain: usize,
    /// Per-kind overrides, e.g. `[kinds.sync-worker] memory_limit_bytes = 16777216`.
    pub kinds: BTreeMap<String, KindLimits>,
}

/// Limits a kind may override.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KindLimits {
    pub memory_limit_bytes: Option<usize>,
    pub turn_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grains_dir: PathBuf::from("grains"),
            data_dir: PathBuf::from("data"),
            cache_dir: None,
            idle_timeout_ms: 300_000,
            max_activations: 100_000,
            mailbox_capacity: 256,
            turn_timeout_ms: 5_000,
            call_timeout_ms: 10_000,
            max_payload_bytes: 1 << 20,
            max_state_bytes: 1 << 20,
            memory_limit_bytes: 64 << 20,
            admin_token: None,
            log_format: LogFormat::Text,
            grace_ms: 25_000,
            readiness_delay_ms: 0,
            turn_grace_ms: 10_000,
            lock_wait_ms: 60_000,
            open_copy_max_mib: 1024,
            min_reminder_period_ms: 1_000,
            max_reminders_per_grain: 256,
            kinds: BTreeMap::new(),
        }
    }
}

/// Environment variables that override the file, one per top-level key.
const ENV_PREFIX: &str = "GRANARY_";
/// Every top-level key but `kinds` (a table, file only); a unit test keeps it in step with
/// the struct.
pub const ENV_KEYS: &[&str] = &[
    "listen",
    "grains_dir",
    "data_dir",
    "cache_dir",
    "idle_timeout_ms",
    "max_activations",
    "mailbox_capacity",
    "turn_timeout_ms",
    "call_timeout_ms",
    "max_payload_bytes",
    "max_state_bytes",
    "memory_limit_bytes",
    "admin_token",
    "log_format",
    "grace_ms",
    "readiness_delay_ms",
    "turn_grace_ms",
    "lock_wait_ms",
    "open_copy_max_mib",
    "min_reminder_period_ms",
    "max_reminders_per_grain",
];
/// Keys whose environment value is always a string, even when it looks like a number.
const STRING_KEYS: &[&str] = &[
    "listen",
    "grains_dir",
    "data_dir",
    "cache_dir",
    "admin_token",
    "log_format",
];

impl Config {
    /// Defaults, then `file` if given, then `GRANARY_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if !Self::is_env_key(&key) {
                continue;
            }
            let value = if STRING_KEYS.contains(&key.as_str()) {
                toml::Value::String(value)
            } else {
                env_value(&value)
            };
            table.insert(key, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Only scalar top-level keys come from the environment; `GRANARY_ADDR` and the like
    /// belong to the CLI client and must not be mistaken for silo settings.
    fn is_env_key(key: &str) -> bool {
        ENV_KEYS.contains(&key)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_activations == 0 {
            bail!("max_activations must be at least 1");
        }
        if self.mailbox_capacity == 0 {
            bail!("mailbox_capacity must be at least 1");
        }
        if self.turn_timeout_ms == 0 || self.call_timeout_ms == 0 {
            bail!("turn_timeout_ms and call_timeout_ms must be positive");
        }
        if self.memory_limit_bytes < (1 << 16) {
            bail!("memory_limit_bytes must be at least one wasm page (65536)");
        }
        if self.min_reminder_period_ms < 100 {
            bail!("min_reminder_period_ms must be at least 100");
        }
        for kind in self.kinds.keys() {
            crate::grain_id::validate_kind(kind).context("in [kinds]")?;
        }
        Ok(())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    pub fn turn_timeout(&self, kind: &str) -> Duration {
        let ms = self
            .kinds
            .get(kind)
            .and_then(|k| k.turn_timeout_ms)
            .unwrap_or(self.turn_timeout_ms);
        Duration::from_millis(ms)
    }

    pub fn memory_limit(&self, kind: &str) -> usize {
        self.kinds
            .get(kind)
            .and_then(|k| k.memory_limit_bytes)
            .unwrap_or(self.memory_limit_bytes)
    }
}

/// A numeric or boolean environment value is parsed as TOML (`42`, `true`); anything else
/// stays a string so the type error names the key.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_scalar_key_has_an_environment_variable() {
        let table = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<&str> = table
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "kinds")
            .collect();
        let mut env: Vec<&str> = ENV_KEYS.to_vec();
        keys.sort();
        env.sort();
        assert_eq!(keys, env);
    }

    #[test]
    fn defaults_need_no_file() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("granary.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nidle_timeout_ms = 1000\n[kinds.counter]\nturn_timeout_ms = 50\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            env(&[
                ("GRANARY_IDLE_TIMEOUT_MS", "2000"),
                ("GRANARY_DATA_DIR", "/var/lib/granary"),
                ("GRANARY_ADDR", "http://elsewhere"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.idle_timeout_ms, 2000);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/granary"));
        assert_eq!(config.turn_timeout("counter"), Duration::from_millis(50));
        assert_eq!(config.turn_timeout("ledger"), Duration::from_millis(5000));
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listen = 5\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path), env(&[])).unwrap_err());
        assert!(err.contains("listen"), "{err}");

        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path), env(&[])).unwrap_err());
        assert!(err.contains("no_such_key"), "{err}");

        let err = Config::load(Some(&dir.path().join("missing.toml")), env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"));

        let err = Config::load(None, env(&[("GRANARY_MAX_ACTIVATIONS", "0")])).unwrap_err();
        assert!(format!("{err:#}").contains("max_activations"));
    }
}
