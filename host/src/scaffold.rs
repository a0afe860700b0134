//! `granary new`: scaffolds a grain crate that builds for `wasm32-wasip2` and runs with
//! `granary serve` as is.
//!
//! The files come from the templates in `scaffold/` (`{{placeholder}}` substitution). The
//! crate is its own workspace (so it builds wherever it lives, also inside another
//! workspace's tree) with the recommended release profile for grains. Its `granary-sdk`
//! dependency is:
//! - a path dependency on the SDK of the Granary checkout the crate is created in (found by
//!   walking up from the destination's parent to a directory holding a `[workspace]`
//!   `Cargo.toml` and `guest-sdk/Cargo.toml`), written relative to the crate;
//! - a path dependency on `--sdk-path` when given (absolute);
//! - otherwise the registry version `granary-sdk = "0.1"`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::grain_id::validate_kind;

const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.in");
const LIB_RS: &str = include_str!("scaffold/lib.rs.in");
const README_MD: &str = include_str!("scaffold/README.md.in");
const GITIGNORE: &str = include_str!("scaffold/gitignore.in");

/// The registry version of the SDK a scaffold outside a checkout depends on.
pub const SDK_VERSION: &str = "0.1";

/// `granary new NAME [--path DIR] [--sdk-path PATH]`
#[derive(clap::Args, Debug, Clone)]
pub struct NewArgs {
    /// The grain's kind, also the crate's name: `[a-z][a-z0-9-]{0,62}`, e.g. `notes`.
    pub name: String,
    /// Directory to create (default `./NAME`); it must not exist or must be empty.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Depend on granary-sdk at this path (the `guest-sdk/` of a Granary checkout, or the
    /// checkout itself) instead of the registry version. Inside a checkout this is
    /// automatic.
    #[arg(long, value_name = "PATH")]
    pub sdk_path: Option<PathBuf>,
}

/// Where the generated crate gets `granary-sdk` from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkDependency {
    /// `granary-sdk = { path = "..." }`: the path as written into `Cargo.toml`.
    Path(String),
    /// `granary-sdk = "0.1"`.
    Registry,
}

impl SdkDependency {
    /// The dependency line of `Cargo.toml`.
    pub fn toml_line(&self) -> String {
        match self {
            SdkDependency::Path(path) => format!(
                "granary-sdk = {{ path = {} }}",
                toml::Value::String(path.clone())
            ),
            SdkDependency::Registry => format!("granary-sdk = \"{SDK_VERSION}\""),
        }
    }

    fn readme_note(&self) -> String {
        match self {
            SdkDependency::Path(path) => format!(
                "`Cargo.toml` depends on the SDK of a Granary checkout by path (`{path}`). \
                 Moving the crate elsewhere? Point that path at the checkout's `guest-sdk/`, \
                 or use a git dependency, or `granary-sdk = \"{SDK_VERSION}\"` once the SDK \
                 is published on crates.io."
            ),
            SdkDependency::Registry => format!(
                "`Cargo.toml` depends on `granary-sdk = \"{SDK_VERSION}\"`. Until the SDK is \
                 published on crates.io, use a git dependency on the Granary repository or a \
                 path dependency on a checkout, e.g. \
                 `granary-sdk = {{ path = \"../granary/guest-sdk\" }}` (or scaffold with \
                 `granary new NAME --sdk-path <checkout>/guest-sdk`)."
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            SdkDependency::Path(path) => format!("granary-sdk from path {path}"),
            SdkDependency::Registry => format!("granary-sdk {SDK_VERSION} from crates.io"),
        }
    }
}

/// A crate written by [`create`].
#[derive(Debug, Clone)]
pub struct Scaffold {
    /// The directory as the user named it (for printing).
    pub shown_dir: PathBuf,
    /// The directory, absolute.
    pub dir: PathBuf,
    pub kind: String,
    /// The library's name: the kind with `-` replaced by `_`; cargo names the component
    /// `<crate_name>.wasm`.
    pub crate_name: String,
    pub type_name: String,
    pub sdk: SdkDependency,
}

/// `granary new`: creates the crate and prints the next steps.
pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let scaffold = create(&args)?;
    print!("{}", scaffold.next_steps());
    Ok(ExitCode::SUCCESS)
}

/// Validates the name and the destination, then writes `Cargo.toml`, `src/lib.rs`,
/// `README.md` and `.gitignore`. Never overwrites anything.
pub fn create(args: &NewArgs) -> anyhow::Result<Scaffold> {
    let kind = args.name.as_str();
    validate_grain_name(kind)?;
    let shown_dir = args.path.clone().unwrap_or_else(|| PathBuf::from(kind));
    let dir = absolute(&shown_dir)
        .with_context(|| format!("resolving the destination {}", shown_dir.display()))?;
    check_destination(&dir)?;
    let sdk = sdk_dependency(&dir, args.sdk_path.as_deref())?;
    let crate_name = kind.replace('-', "_");
    let type_name = type_name(kind);
    let fill = |template: &str| {
        template
            .replace("{{kind}}", kind)
            .replace("{{crate_name}}", &crate_name)
            .replace("{{type_name}}", &type_name)
            .replace("{{sdk_dependency}}", &sdk.toml_line())
            .replace("{{sdk_note}}", &sdk.readme_note())
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (file, template) in [
        ("Cargo.toml", CARGO_TOML),
        ("src/lib.rs", LIB_RS),
        ("README.md", README_MD),
        (".gitignore", GITIGNORE),
    ] {
        write_new(&dir.join(file), &fill(template))?;
    }
    Ok(Scaffold {
        shown_dir,
        dir,
        kind: kind.to_owned(),
        crate_name,
        type_name,
        sdk,
    })
}

impl Scaffold {
    /// What to do next: build, copy under the kind's name, serve, call.
    pub fn next_steps(&self) -> String {
        let kind = &self.kind;
        let dir = shell_quote(&self.shown_dir.display().to_string());
        let wasm = format!("{}.wasm", self.crate_name);
        let rename = if wasm == format!("{kind}.wasm") {
            String::new()
        } else {
            format!("   # cargo writes {wasm}; the silo loads <kind>.wasm")
        };
        let mut out = format!(
            "Created the grain crate `{kind}` in {} ({}).\n\n",
            self.shown_dir.display(),
            self.sdk.describe()
        );
        out += &format!(
            "Build it and serve it (needs the target once: rustup target add wasm32-wasip2):\n\n\
             \x20 cd {dir}\n\
             \x20 cargo build --release --target wasm32-wasip2\n\
             \x20 mkdir -p grains\n\
             \x20 cp target/wasm32-wasip2/release/{wasm} grains/{kind}.wasm{rename}\n\
             \x20 granary serve --grains grains --data data\n\n\
             Then, in another terminal:\n\n\
             \x20 granary call {kind}/alice add '\"buy milk\"'    # 1\n\
             \x20 granary call {kind}/alice list                # [\"buy milk\"]\n\
             \x20 granary call {kind}/alice summary\n\n\
             Or build, serve and redeploy on every change, in one command:\n\n\
             \x20 granary dev {dir}\n"
        );
        if self.sdk == SdkDependency::Registry {
            out += &format!(
                "\nNote: Cargo.toml depends on granary-sdk = \"{SDK_VERSION}\"; until it is \
                 published on crates.io, use a git or path dependency instead (see README.md), \
                 or scaffold with --sdk-path <checkout>/guest-sdk.\n"
            );
        }
        out
    }
}

/// A grain name is a kind name that cargo also accepts as a package name.
pub fn validate_grain_name(name: &str) -> anyhow::Result<()> {
    if let Err(e) = validate_kind(name) {
        bail!(
            "cannot create a grain named {name:?}: {e}. The name is the grain's kind and its \
             crate's name: lowercase letters, digits and '-', starting with a letter (e.g. \
             `notes` or `order-book`)"
        );
    }
    let ident = name.replace('-', "_");
    if RUST_KEYWORDS.contains(&ident.as_str()) {
        bail!(
            "cannot create a grain named {name:?}: it is a Rust keyword, which cargo refuses as a crate name"
        );
    }
    if RESERVED_CRATE_NAMES.contains(&name) {
        bail!(
            "cannot create a grain named {name:?}: it is the name of a crate the grain builds \
             with (the standard library or a dependency); pick another name"
        );
    }
    Ok(())
}

const RUST_KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

const RESERVED_CRATE_NAMES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
    "granary-sdk",
    "granary-sdk-macros",
    "serde",
    "serde-derive",
    "serde-json",
    "wit-bindgen",
];

/// Identifiers the template uses: a grain type must not shadow them.
const TEMPLATE_IDENTS: &[&str] = &[
    "Ctx",
    "Serialize",
    "Deserialize",
    "Debug",
    "Default",
    "Vec",
    "String",
    "Result",
    "Ok",
    "Err",
    "Option",
    "Some",
    "None",
];

/// `order-book` → `OrderBook`; a name the template already uses gets a `Grain` suffix.
fn type_name(kind: &str) -> String {
    let name: String = kind
        .split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect();
    if TEMPLATE_IDENTS.contains(&name.as_str()) {
        format!("{name}Grain")
    } else {
        name
    }
}

fn check_destination(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", dir.display())),
        Ok(meta) if !meta.is_dir() => bail!(
            "{} already exists and is not a directory; refusing to overwrite it",
            dir.display()
        ),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir)
                .with_context(|| format!("reading directory {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; refusing to overwrite it (choose \
                     another --path, or remove the directory)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

fn sdk_dependency(dir: &Path, sdk_path: Option<&Path>) -> anyhow::Result<SdkDependency> {
    if let Some(path) = sdk_path {
        let path = path
            .canonicalize()
            .with_context(|| format!("--sdk-path {}", path.display()))?;
        let sdk = if is_sdk(&path) {
            path
        } else if is_sdk(&path.join("guest-sdk")) {
            path.join("guest-sdk")
        } else {
            bail!(
                "--sdk-path {}: no granary-sdk crate there (pass the guest-sdk/ directory of a \
                 Granary checkout)",
                path.display()
            );
        };
        return Ok(SdkDependency::Path(path_string(&sdk)));
    }
    let parent = dir.parent().unwrap_or(dir);
    match find_checkout_sdk(parent) {
        Some(sdk) => Ok(SdkDependency::Path(path_string(&relative_path(dir, &sdk)))),
        None => Ok(SdkDependency::Registry),
    }
}

/// The `guest-sdk` of the first ancestor of `start` (itself included) that is a Granary
/// checkout: a `[workspace]` `Cargo.toml` next to `guest-sdk/Cargo.toml`.
pub fn find_checkout_sdk(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        let table = manifest.parse::<toml::Table>().ok()?;
        let sdk = dir.join("guest-sdk");
        (table.contains_key("workspace") && is_sdk(&sdk)).then_some(sdk)
    })
}

fn is_sdk(dir: &Path) -> bool {
    package_name(&dir.join("Cargo.toml")).is_some_and(|name| name == "granary-sdk")
}

/// `[package] name` of a manifest.
pub fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let table = text.parse::<toml::Table>().ok()?;
    Some(table.get("package")?.get("name")?.as_str()?.to_owned())
}

/// An absolute, normalized path without touching what does not exist yet: `.` and `..`
/// are resolved lexically, then the deepest existing ancestor is canonicalized (symlinks
/// resolved) and the rest appended.
fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let mut normal = PathBuf::new();
    for part in std::path::absolute(path)?.components() {
        match part {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut rest = Vec::new();
    let mut existing = normal.as_path();
    loop {
        if let Ok(mut out) = existing.canonicalize() {
            out.extend(rest.iter().rev());
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return Ok(normal),
        }
    }
}

/// `to` relative to the directory `from`; both absolute and normalized.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for part in &to[common..] {
        out.push(part);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Cargo wants `/` in paths on every platform.
fn path_string(path: &Path) -> String {
    path.display().to_string().replace('\\', "/")
}

fn write_new(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Quotes a word for a POSIX shell when it needs it (printed commands are pasted).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["notes", "order-book", "a1", "counter-2"] {
            validate_grain_name(good).unwrap();
        }
        for bad in [
            "Bad_Name",
            "",
            "1a",
            "a_b",
            "fn",
            "type",
            "std",
            "serde",
            "granary-sdk",
        ] {
            assert!(validate_grain_name(bad).is_err(), "{bad}");
        }
        let err = validate_grain_name("Bad_Name").unwrap_err().to_string();
        assert!(err.contains("Bad_Name") && err.contains("[a-z]"), "{err}");
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name("notes"), "Notes");
        assert_eq!(type_name("order-book"), "OrderBook");
        assert_eq!(type_name("a--b2"), "AB2");
        assert_eq!(type_name("ctx"), "CtxGrain");
        assert_eq!(type_name("vec"), "VecGrain");
    }

    #[test]
    fn relative_paths() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(
            rel("/w/target/tmp/x", "/w/guest-sdk"),
            Path::new("../../../guest-sdk")
        );
        assert_eq!(rel("/w/notes", "/w/guest-sdk"), Path::new("../guest-sdk"));
        assert_eq!(rel("/a", "/a"), Path::new("."));
    }

    #[test]
    fn dependency_lines() {
        assert_eq!(SdkDependency::Registry.toml_line(), "granary-sdk = \"0.1\"");
        assert_eq!(
            SdkDependency::Path("../guest-sdk".into()).toml_line(),
            "granary-sdk = { path = \"../guest-sdk\" }"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("./notes"), "./notes");
        assert_eq!(shell_quote("my dir"), "'my dir'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn absolute_paths_resolve_dots() {
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(absolute(Path::new("x/../y")).unwrap(), cwd.join("y"));
        assert_eq!(absolute(Path::new("./z")).unwrap(), cwd.join("z"));
    }

    #[test]
    fn templates_have_no_leftover_placeholders() {
        let dep = SdkDependency::Registry;
        for template in [CARGO_TOML, LIB_RS, README_MD, GITIGNORE] {
            let filled = template
                .replace("{{kind}}", "k")
                .replace("{{crate_name}}", "k")
                .replace("{{type_name}}", "K")
                .replace("{{sdk_dependency}}", &dep.toml_line())
                .replace("{{sdk_note}}", &dep.readme_note());
            assert!(!filled.contains("{{"), "{filled}");
        }
    }
}
