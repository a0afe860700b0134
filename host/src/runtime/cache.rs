//! The compile cache: components compiled by this silo, serialized under the data
//! directory and keyed by content hash and engine, so a restart does not recompile.
//!
//! Deserializing compiled code is `unsafe` (it is executed as is), so the cache only loads
//! files this silo wrote itself, each prefixed with the SHA-256 of its body: a truncated or
//! corrupt entry is detected, logged and recompiled, never loaded.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

pub struct CompileCache {
    dir: PathBuf,
    engine_tag: String,
}

impl CompileCache {
    pub fn new(dir: &Path, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: dir.to_path_buf(),
            engine_tag: format!("{:016x}", hasher.finish()),
        }
    }

    /// The cached compilation of `wasm`, or a fresh one (then written to the cache).
    /// Returns whether it came from the cache.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self
            .dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_tag));
        if let Some(component) = self.load(engine, &path) {
            return Ok((component, true));
        }
        let component = Component::new(engine, wasm)?;
        self.store(&path, &component);
        Ok((component, false))
    }

    fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let verified = bytes.len() > 32 && Sha256::digest(&bytes[32..]).as_slice() == &bytes[..32];
        if !verified {
            tracing::warn!(path = %path.display(), "corrupt compile-cache entry; recompiling");
            return None;
        }
        // SAFETY: the file lives in this silo's own cache directory, was written by
        // `store` below from `Component::serialize` of this engine configuration (the
        // engine tag is in its name), and its checksum was just verified.
        match unsafe { Component::deserialize(engine, &bytes[32..]) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unusable compile-cache entry; recompiling");
                None
            }
        }
    }

    /// Best effort: a cache that cannot be written only costs a recompile next time.
    fn store(&self, path: &Path, component: &Component) {
        let result = (|| -> anyhow::Result<()> {
            let body = component.serialize()?;
            std::fs::create_dir_all(&self.dir)?;
            // Unique per writer: tests and restarts may compile the same kind at once.
            let tmp = path.with_extension(format!(
                "tmp{}-{:x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            let mut bytes = Sha256::digest(&body).to_vec();
            bytes.extend_from_slice(&body);
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not write compile cache");
        }
    }
}
