//! Kinds: the grain components a silo can run, loaded as `<kind>.wasm` from the grains
//! directory through a `cap_std::fs::Dir` (so no name can escape it), validated against
//! the `grain` world and pre-linked once into an `InstancePre`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::bindings::GrainPre;
use super::cache::CompileCache;
use super::{GrainHost, Runtime, out_of_memory};
use crate::grain_id::validate_kind;

/// One loaded version of a kind.
pub struct GrainKind {
    pub name: String,
    /// First 16 hex digits of the component's SHA-256.
    pub version: String,
    pub pre: GrainPre<GrainHost>,
}

/// Why a component was refused; names the file and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct KindError {
    pub file: String,
    pub reason: String,
}

/// The kinds this silo serves. Replacing an entry (deploy) affects new activations only.
pub struct Kinds {
    map: RwLock<HashMap<String, Arc<GrainKind>>>,
    cache: CompileCache,
}

const WASM_MAGIC: &[u8] = b"\0asm";
const CORE_VERSION: &[u8] = &[1, 0, 0, 0];

impl Kinds {
    pub fn new(runtime: &Runtime, cache_dir: &Path) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            cache: CompileCache::new(cache_dir, &runtime.engine),
        }
    }

    /// Loads every `<kind>.wasm` in `dir`. A bad file is logged and skipped; the others
    /// load. Fails only when the directory itself cannot be read.
    pub fn load_dir(&self, runtime: &Runtime, dir: &Path) -> anyhow::Result<Vec<KindError>> {
        let grains = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())
            .map_err(|e| anyhow::anyhow!("cannot open grains directory {}: {e}", dir.display()))?;
        let mut names: Vec<String> = grains
            .entries()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".wasm"))
            .collect();
        names.sort();
        let mut errors = Vec::new();
        for (i, file) in names.iter().enumerate() {
            let started = Instant::now();
            match self.load_file(runtime, &grains, file) {
                Ok((kind, cached)) => tracing::info!(
                    kind = %kind.name, version = %kind.version, cached,
                    progress = format!("{}/{}", i + 1, names.len()),
                    ms = started.elapsed().as_millis() as u64,
                    "loaded kind"
                ),
                Err(e) => {
                    tracing::error!(file = %e.file, reason = %e.reason, "refused grain component");
                    errors.push(e);
                }
            }
        }
        Ok(errors)
    }

    fn load_file(
        &self,
        runtime: &Runtime,
        grains: &cap_std::fs::Dir,
        file: &str,
    ) -> Result<(Arc<GrainKind>, bool), KindError> {
        let fail = |reason: String| KindError {
            file: file.to_owned(),
            reason,
        };
        let name = file.trim_end_matches(".wasm");
        validate_kind(name).map_err(|e| fail(format!("file name is not a kind name: {e}")))?;
        let bytes = grains
            .read(file)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        self.install(runtime, name, &bytes)
            .map_err(|e| fail(e.reason))
    }

    /// Validates, compiles (or loads from cache), pre-links and installs a component.
    /// On error nothing changes.
    pub fn install(
        &self,
        runtime: &Runtime,
        name: &str,
        wasm: &[u8],
    ) -> Result<(Arc<GrainKind>, bool), KindError> {
        let fail = |reason: String| KindError {
            file: format!("{name}.wasm"),
            reason,
        };
        check_header(wasm).map_err(fail)?;
        let version = hex16(&Sha256::digest(wasm));
        let (component, cached) = self
            .cache
            .load_or_compile(&runtime.engine, wasm, &version)
            .map_err(|e| {
                if out_of_memory(&e) {
                    fail(format!(
                        "compiling it ran out of memory or memory mappings: {e:#}"
                    ))
                } else {
                    fail(format!("not a valid component: {e:#}"))
                }
            })?;
        check_world_version(&runtime.engine, &component).map_err(&fail)?;
        let instance_pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
            fail(format!(
                "imports something the grain world does not provide ({e:#}); build it with \
                 granary-sdk for wasm32-wasip2"
            ))
        })?;
        let pre = GrainPre::new(instance_pre).map_err(|e| {
            fail(format!(
                "does not export the granary:grain@0.1.0 world ({e:#}); mark an impl with \
                 #[grain] (granary-sdk)"
            ))
        })?;
        let kind = Arc::new(GrainKind {
            name: name.to_owned(),
            version,
            pre,
        });
        self.write().insert(name.to_owned(), kind.clone());
        Ok((kind, cached))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    pub fn get(&self, name: &str) -> Option<Arc<GrainKind>> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<GrainKind>> {
        let mut kinds: Vec<_> = self.read().values().cloned().collect();
        kinds.sort_by(|a, b| a.name.cmp(&b.name));
        kinds
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<GrainKind>>> {
        // Poisoning needs a panic while the lock is held; no code here panics under it.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<GrainKind>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `granary:grain` version this silo implements.
pub const WORLD_VERSION: &str = "0.1.0";

/// A component built with a granary-sdk for another version of the world imports
/// interfaces the linker lacks; say that instead of a bare "import not found".
fn check_world_version(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> Result<(), String> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        let Some(rest) = name.strip_prefix("granary:grain/") else {
            continue;
        };
        let version = rest.split_once('@').map_or("", |(_, v)| v);
        if version != WORLD_VERSION {
            return Err(format!(
                "built for granary:grain@{version} (it imports {name}), but this silo provides                  granary:grain@{WORLD_VERSION}: rebuild it with the granary-sdk version that                  matches this silo"
            ));
        }
    }
    Ok(())
}

/// Tells a core module (what wasm32-wasip1 or wasm32-unknown-unknown produce) and
/// non-wasm files apart from components before the compiler sees them.
fn check_header(wasm: &[u8]) -> Result<(), String> {
    if wasm.is_empty() {
        return Err("file is empty".into());
    }
    if wasm.len() < 8 || &wasm[..4] != WASM_MAGIC {
        return Err("not a WebAssembly file (bad magic number)".into());
    }
    if &wasm[4..8] == CORE_VERSION {
        return Err(
            "a core wasm module, not a component: build the grain for wasm32-wasip2 \
             (not wasm32-wasip1 or wasm32-unknown-unknown)"
                .into(),
        );
    }
    Ok(())
}

fn hex16(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(check_header(b"").unwrap_err().contains("empty"));
        assert!(check_header(b"hello world").unwrap_err().contains("magic"));
        assert!(
            check_header(b"\0asm\x01\0\0\0")
                .unwrap_err()
                .contains("wasm32-wasip2")
        );
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
