//! The silo: wires runtime, kinds, storage, catalog, outbox, gateway and lifecycle
//! together, and is the one entry point for calls into grains.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::drain::{DrainPlan, Lifecycle, SiloState};
use crate::grain_id::GrainId;
use crate::message::{Call, CallChain, CallError, Message, ReminderDue};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::reminders::ReminderService;
use crate::runtime::{Allocation, KindError, Kinds, Runtime};
use crate::storage::{
    DueReminder, Health, MessageId, OutboxEntry, SledStorage, Storage, StorageError,
};

pub struct Silo {
    /// Names the silo in logs and metrics: `POD_NAME` under Kubernetes.
    pub name: String,
    pub config: Config,
    pub runtime: Runtime,
    pub kinds: Kinds,
    pub storage: Arc<dyn Storage>,
    pub catalog: Catalog,
    pub outbox: Outbox,
    pub reminders: ReminderService,
    pub metrics: Metrics,
    pub lifecycle: Lifecycle,
    /// Every activation and delivery task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl Silo {
    /// Opens storage and loads the kinds; nothing is served yet.
    pub fn open(config: Config) -> anyhow::Result<Arc<Self>> {
        let name = silo_name();
        let metrics = Metrics::new(&name, pod_env("POD_NAMESPACE").as_deref());
        prepare_data_dir(&config.data_dir)?;
        let storage = open_storage(&config, &metrics)?;
        let runtime = Runtime::new(&config)?;
        let capacity = runtime.capacity;
        log_capacity(&config, &runtime);
        let kinds = Kinds::new(&runtime, &config.cache_dir());
        kinds.load_dir(&runtime, &config.grains_dir)?;
        let catalog = Catalog::new(
            capacity.max_activations,
            capacity.instances,
            config.mailbox_capacity,
            metrics.activations.clone(),
        );
        Ok(Arc::new(Self {
            name,
            config,
            runtime,
            kinds,
            storage: Arc::new(storage),
            catalog,
            outbox: Outbox::default(),
            reminders: ReminderService::default(),
            metrics,
            lifecycle: Lifecycle::default(),
            tasks: TaskTracker::new(),
        }))
    }

    /// Calls `method` on `target` and waits for the reply (committed before it is sent).
    pub async fn call(
        self: &Arc<Self>,
        target: GrainId,
        method: String,
        payload: Vec<u8>,
        chain: CallChain,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let started = Instant::now();
        let result = self
            .call_inner(&target, method, payload, chain, deadline, None)
            .await;
        let outcome = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
        // Only deployed kinds become metric labels: names from clients must not mint series.
        let kind_label = match result {
            Err(CallError::UnknownKind(_) | CallError::BadId(_)) => "-",
            _ => target.kind.as_str(),
        };
        self.metrics
            .observe_call(kind_label, outcome, started.elapsed().as_secs_f64());
        result
    }

    /// Delivers a committed one-way message; the receiving turn records `id`.
    pub async fn deliver(
        self: &Arc<Self>,
        entry: &OutboxEntry,
        id: MessageId,
        chain: CallChain,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        self.call_inner(
            &entry.target,
            entry.method.clone(),
            entry.payload.clone(),
            chain,
            deadline,
            Some(id),
        )
        .await
    }

    /// Installs a new version of `kind` (validated first: a bad component changes
    /// nothing). New activations use it; live activations of the old version deactivate
    /// gracefully and reactivate on their next message. The file is also written to the
    /// grains directory when it is writable, so a restart keeps the new version.
    pub fn deploy(&self, kind: &str, wasm: &[u8]) -> Result<Deployed, KindError> {
        // The error text carries a shortened, sanitized copy of the name, never the raw one.
        crate::grain_id::validate_kind(kind).map_err(|e| KindError {
            file: "(refused kind name)".to_owned(),
            reason: e.to_string(),
        })?;
        let (installed, _) = self.kinds.install(&self.runtime, kind, wasm)?;
        let upgraded = self.catalog.upgrade(kind, &installed.version);
        let persisted = match persist_component(&self.config.grains_dir, kind, wasm) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(kind, error = %e, "deployed in memory only: the grains directory is not writable; a restart reverts to the file on disk");
                false
            }
        };
        tracing::info!(kind, version = %installed.version, upgraded, persisted, "deployed");
        Ok(Deployed {
            kind: kind.to_owned(),
            version: installed.version.clone(),
            upgraded,
            persisted,
        })
    }

    /// Runs a due reminder's tick as a turn of its grain (activating it if needed).
    pub async fn fire_reminder(
        self: &Arc<Self>,
        due: &DueReminder,
        attempt: u32,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let (reply, replied) = oneshot::channel();
        let message = Message::Reminder(Box::new(ReminderDue {
            due: due.clone(),
            attempt,
            deadline,
            reply,
        }));
        self.catalog
            .place(self, &due.grain, message, deadline)
            .await?;
        reply_of(replied, deadline).await
    }

    async fn call_inner(
        self: &Arc<Self>,
        target: &GrainId,
        method: String,
        payload: Vec<u8>,
        chain: CallChain,
        deadline: Instant,
        delivery: Option<MessageId>,
    ) -> Result<Vec<u8>, CallError> {
        let cap = self.config.max_payload_bytes;
        if payload.len() > cap {
            return Err(CallError::TooLarge(cap as u64));
        }
        if self.storage.health() != Health::Healthy {
            return Err(CallError::Overloaded);
        }
        if chain.contains(target) {
            return Err(CallError::Cycle(chain.describe_cycle(target)));
        }
        let (reply, replied) = oneshot::channel();
        let message = Message::Call(Box::new(Call {
            method,
            payload,
            chain,
            deadline,
            delivery,
            reply,
        }));
        self.catalog.place(self, target, message, deadline).await?;
        reply_of(replied, deadline).await
    }
}

/// The answer to a placed message: already there when its turn ran in the caller's task.
async fn reply_of<T>(
    mut replied: oneshot::Receiver<Result<T, CallError>>,
    deadline: Instant,
) -> Result<T, CallError> {
    if let Ok(result) = replied.try_recv() {
        return result;
    }
    match tokio::time::timeout_at(deadline.into(), replied).await {
        Ok(Ok(result)) => result,
        // The activation dropped the message without answering: it was interrupted.
        Ok(Err(_)) => Err(CallError::Draining),
        Err(_) => Err(CallError::Deadline),
    }
}

/// The result of a deploy, as the admin API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    pub kind: String,
    pub version: String,
    /// Live activations of the old version asked to deactivate.
    pub upgraded: usize,
    /// Whether the component was written to the grains directory.
    pub persisted: bool,
}

/// Writes `<kind>.wasm` into the grains directory through a capability handle (no path can
/// escape it), atomically via a temporary file.
fn persist_component(grains_dir: &Path, kind: &str, wasm: &[u8]) -> std::io::Result<()> {
    let dir = cap_std::fs::Dir::open_ambient_dir(grains_dir, cap_std::ambient_authority())?;
    let tmp = format!(".{kind}.wasm.tmp");
    dir.write(&tmp, wasm)?;
    dir.rename(&tmp, &dir, format!("{kind}.wasm"))
}

/// A silo that serves HTTP; `shutdown` drains it.
pub struct RunningSilo {
    pub silo: Arc<Silo>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    stop_server: tokio_util::sync::CancellationToken,
}

impl RunningSilo {
    /// Binds the gateway, starts background loops and marks the silo serving.
    pub async fn start(silo: Arc<Silo>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(silo.config.listen)
            .await
            .with_context(|| format!("binding {}", silo.config.listen))?;
        Self::start_on(silo, listener).await
    }

    /// Like `start`, on a listener bound earlier (`serve` binds before opening storage so
    /// probes get answers while it waits).
    pub async fn start_on(
        silo: Arc<Silo>,
        listener: tokio::net::TcpListener,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let stop_server = tokio_util::sync::CancellationToken::new();
        let router = crate::gateway::router(silo.clone());
        let stop = stop_server.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "gateway failed");
            }
        });
        tokio::spawn(Outbox::run(silo.clone()));
        tokio::spawn(ReminderService::run(silo.clone()));
        silo.lifecycle.set(SiloState::Serving);
        tracing::info!(
            %addr,
            silo = %silo.name,
            namespace = pod_env("POD_NAMESPACE").unwrap_or_default(),
            pod_ip = pod_env("POD_IP").unwrap_or_default(),
            kinds = silo.kinds.list().len(),
            "serving"
        );
        Ok(Self {
            silo,
            addr,
            server,
            stop_server,
        })
    }

    /// Drains the silo, then stops the gateway. Returns whether the drain finished in time.
    pub async fn shutdown(self) -> bool {
        let plan = DrainPlan::from_config(&self.silo.config);
        let ok = crate::drain::drain(&self.silo, plan).await;
        self.stop_server.cancel();
        let _ = self.server.await;
        self.silo.tasks.close();
        ok
    }
}

/// The data directory is created if only its last component is missing (like `mkdir`),
/// so a typo in a parent path fails loudly instead of writing somewhere unexpected.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent
            && !parent.is_dir()
        {
            bail!(
                "data directory {} cannot be created: its parent {} does not exist",
                dir.display(),
                parent.display()
            );
        }
        std::fs::create_dir(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
    }
    if !dir.is_dir() {
        bail!("data directory {} is not a directory", dir.display());
    }
    let probe = dir.join(".granary-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Opens the database, waiting with backoff while another process holds it (the previous
/// pod may still be draining): the silo stays unready and logs why instead of crash-looping.
fn open_storage(config: &Config, metrics: &Metrics) -> anyhow::Result<SledStorage> {
    let dir = config.data_dir.join("db");
    let started = Instant::now();
    let give_up = std::time::Duration::from_millis(config.lock_wait_ms);
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        match SledStorage::open(
            &dir,
            config.open_copy_max_mib << 20,
            metrics.flush_seconds.clone(),
        ) {
            Ok(storage) => return Ok(storage),
            Err(StorageError::Locked(reason)) if started.elapsed() < give_up => {
                tracing::warn!(
                    %reason,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "data directory is locked; waiting for the other process to exit"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)).with_context(|| {
                    format!(
                        "opening storage in {} (waited {} ms)",
                        dir.display(),
                        started.elapsed().as_millis()
                    )
                });
            }
        }
    }
}

/// The silo's name: Kubernetes' `POD_NAME` (from the downward API), else `local`.
fn silo_name() -> String {
    pod_env("POD_NAME").unwrap_or_else(|| "local".to_owned())
}

fn pod_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn log_capacity(config: &Config, runtime: &Runtime) {
    let c = runtime.capacity;
    tracing::info!(
        max_activations = c.max_activations,
        instance_slots = c.instances,
        max_map_count = ?c.max_map_count,
        allocation = match c.allocation {
            Allocation::Pooled => "pooled, shared memory images",
            Allocation::Arena => "arena memories, copied images",
        },
        "activation capacity"
    );
    if c.limited_by_maps(config.max_activations) {
        tracing::warn!(
            configured = config.max_activations,
            allowed = c.max_activations,
            "vm.max_map_count limits live activations; raise it (sysctl -w vm.max_map_count=1048576) to allow more, and to let them share their memory images (about 16 KiB less each)"
        );
    }
}
