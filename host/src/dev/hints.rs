//! The `granary call` hints `granary dev` prints: the grain's messages, found with a
//! lexical scan of its source, and a pasteable example payload for each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where `granary call` goes without `--addr`.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";
const HOOKS: &[&str] = &["on_activate", "on_deactivate", "on_timer", "on_reminder"];

/// A public method of the `#[grain]` impl: a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    pub name: String,
    /// The payload argument's type, if the method takes one.
    pub arg: Option<String>,
}

/// The `pub fn`s (hooks excepted) of the impl block marked `#[grain]`, parsed with `syn`.
/// A file that does not parse yields no hints (the build reports the real error).
pub fn grain_methods(src: &str) -> Vec<Method> {
    let Ok(file) = syn::parse_file(src) else {
        return Vec::new();
    };
    let grain_impl = file.items.into_iter().find_map(|item| match item {
        syn::Item::Impl(i) if i.attrs.iter().any(|a| a.path().is_ident("grain")) => Some(i),
        _ => None,
    });
    let Some(grain_impl) = grain_impl else {
        return Vec::new();
    };
    grain_impl
        .items
        .iter()
        .filter_map(|item| match item {
            syn::ImplItem::Fn(f) if matches!(f.vis, syn::Visibility::Public(_)) => Some(f),
            _ => None,
        })
        .filter(|f| !HOOKS.contains(&f.sig.ident.to_string().as_str()))
        .map(|f| Method {
            name: f.sig.ident.to_string(),
            arg: payload_arg(&f.sig),
        })
        .collect()
}

/// The type of the argument decoded from the payload: the one typed argument that is not
/// `&mut Ctx`.
fn payload_arg(sig: &syn::Signature) -> Option<String> {
    sig.inputs.iter().find_map(|input| {
        let syn::FnArg::Typed(arg) = input else {
            return None;
        };
        let ty = &arg.ty;
        let text = quote::quote!(#ty).to_string();
        let is_ctx = matches!(&**ty, syn::Type::Reference(r) if quote::quote!(#r).to_string().ends_with("Ctx"));
        (!is_ctx).then(|| normalize(&text))
    })
}

/// `quote` spaces every token; put the type back the way people write it.
fn normalize(ty: &str) -> String {
    ty.replace(" :: ", "::")
        .replace(" < ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
}

/// A pasteable payload that decodes as `ty` (with a comment when it is only a shape);
/// `None` means no payload.
fn example_payload(ty: &str) -> Option<(String, Option<String>)> {
    let ty = ty.trim().trim_start_matches('&').trim();
    let base = ty.rsplit("::").next().unwrap_or(ty);
    let number = |prefix: char| {
        base.strip_prefix(prefix)
            .is_some_and(|bits| bits == "size" || bits.parse::<u8>().is_ok())
    };
    let plain = |p: &str| Some((p.to_owned(), None));
    match base {
        "String" | "str" | "Box<str>" => plain("'\"text\"'"),
        "bool" => plain("true"),
        "f32" | "f64" => plain("1.5"),
        "()" => None,
        _ if number('u') || number('i') => plain("1"),
        _ if base.starts_with("Option<") => None,
        _ if base.starts_with("Vec<") || base.starts_with('[') => plain("'[]'"),
        _ => Some(("'{}'".to_owned(), Some(format!("{ty} as JSON")))),
    }
}

/// `granary call` lines for every message of the grain.
pub fn call_lines(kind: &str, methods: &[Method], addr: SocketAddr) -> Vec<String> {
    let client = client_addr(addr);
    let addr_flag = if client.to_string() == DEFAULT_ADDR {
        String::new()
    } else {
        format!(" --addr http://{client}")
    };
    methods
        .iter()
        .map(|m| {
            let mut line = format!("granary call {kind}/alice {}", m.name);
            let example = m.arg.as_deref().and_then(example_payload);
            if let Some((payload, _)) = &example {
                line += &format!(" {payload}");
            }
            line += &addr_flag;
            if let Some((_, Some(comment))) = &example {
                line += &format!("   # {comment}");
            }
            line
        })
        .collect()
}

/// Where a client on this machine reaches a listener bound to `addr`.
pub fn client_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"
use granary_sdk::{Ctx, grain};

/// Not the grain: `pub fn nope(&self)` in a comment.
pub fn helper(x: u32) -> u32 { x }

#[grain]
impl Notes {
    /// Adds `{` a note.
    pub fn add(&mut self, note: String) -> Result<usize, String> {
        let brace = '{';
        let s = "} pub fn fake(&self) {";
        Ok(0)
    }

    pub fn list(&self) -> Vec<String> {
        vec![]
    }

    pub fn summary(
        &self,
        ctx: &mut Ctx,
    ) -> String {
        String::new()
    }

    pub fn put(&mut self, ctx: &mut Ctx, entry: std::collections::HashMap<String, u64>) {}

    pub fn maybe(&mut self, by: Option<u64>) -> u64 { 0 }

    fn helper<'a>(&self, x: &'a str) -> &'a str { x }

    pub(crate) fn internal(&self) {}

    fn on_activate(&mut self, ctx: &mut Ctx) {}

    pub fn on_timer(&mut self, ctx: &mut Ctx, name: &str) {}
}

#[cfg(test)]
mod tests {
    pub fn not_a_message() {}
}
"#;

    #[test]
    fn methods_are_found() {
        let methods = grain_methods(SRC);
        let names: Vec<_> = methods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["add", "list", "summary", "put", "maybe"]);
        assert_eq!(methods[0].arg.as_deref(), Some("String"));
        assert_eq!(methods[1].arg, None);
        assert_eq!(methods[2].arg, None);
        assert_eq!(
            methods[3].arg.as_deref(),
            Some("std::collections::HashMap<String, u64>")
        );
        assert_eq!(methods[4].arg.as_deref(), Some("Option<u64>"));
    }

    #[test]
    fn call_hints() {
        let methods = grain_methods(SRC);
        let lines = call_lines("notes", &methods, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(lines[0], "granary call notes/alice add '\"text\"'");
        assert_eq!(lines[1], "granary call notes/alice list");
        assert_eq!(
            lines[3],
            "granary call notes/alice put '{}'   # std::collections::HashMap<String, u64> as JSON"
        );
        assert_eq!(lines[4], "granary call notes/alice maybe");
        let lines = call_lines("notes", &methods, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            lines[1],
            "granary call notes/alice list --addr http://127.0.0.1:9000"
        );
        let payload = |ty| example_payload(ty).map(|(p, _)| p);
        assert_eq!(payload("usize").as_deref(), Some("1"));
        assert_eq!(payload("i64").as_deref(), Some("1"));
        assert_eq!(payload("&str").as_deref(), Some("'\"text\"'"));
        assert_eq!(payload("Option<String>"), None);
    }

    #[test]
    fn scaffold_template_methods() {
        let src = include_str!("../scaffold/lib.rs.in").replace("{{type_name}}", "Notes");
        let names: Vec<_> = grain_methods(&src).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["add", "list", "remove", "summary"]);
    }
}
