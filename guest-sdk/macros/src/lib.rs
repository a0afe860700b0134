//! The `#[grain]` attribute of `granary-sdk`. Use it through `granary_sdk::grain`: the
//! expansion refers to `::granary_sdk` and does not work without it.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    FnArg, ImplItem, ImplItemFn, Item, ItemImpl, PatType, ReturnType, Signature, Type, Visibility,
};

/// Turns an inherent `impl` block into a grain: see the `granary_sdk` crate documentation.
///
/// Every `pub fn` becomes a message named after it; `on_activate`, `on_deactivate`,
/// `on_timer` and `on_reminder` are hooks; other functions are left alone. The macro also
/// emits the component's exports (when compiling for `wasm32`), so a crate holds one
/// `#[grain]` impl: a second one fails with "symbol `activate` is already defined".
#[proc_macro_attribute]
pub fn grain(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let item = TokenStream2::from(item);
    match expand(attr, item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // Keep the item so that one mistake does not cascade into unrelated errors.
            let error = error.to_compile_error();
            quote!(#item #error).into()
        }
    }
}

/// The four hooks, by name.
const HOOKS: [&str; 4] = ["on_activate", "on_deactivate", "on_timer", "on_reminder"];

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(attr, "#[grain] takes no arguments"));
    }
    let item: Item = syn::parse2(item)?;
    let Item::Impl(block) = item else {
        return Err(syn::Error::new_spanned(
            item_head(&item),
            "#[grain] goes on an inherent `impl` block of the grain's struct, \
             e.g. `#[grain] impl Counter { ... }`",
        ));
    };
    check_impl(&block)?;

    let mut errors: Option<syn::Error> = None;
    let mut arms = Vec::new();
    let mut hooks = Vec::new();
    for impl_item in &block.items {
        let ImplItem::Fn(function) = impl_item else {
            continue;
        };
        let name = function.sig.ident.unraw().to_string();
        let result = if HOOKS.contains(&name.as_str()) {
            hook(function, &name).map(|tokens| hooks.push(tokens))
        } else if matches!(function.vis, Visibility::Public(_)) {
            message(function, &name).map(|tokens| arms.push(tokens))
        } else {
            Ok(())
        };
        if let Err(error) = result {
            match &mut errors {
                Some(all) => all.combine(error),
                None => errors = Some(error),
            }
        }
    }
    if let Some(errors) = errors {
        return Err(errors);
    }

    let self_ty = &block.self_ty;
    let grain_impl = quote_spanned! {self_ty.span()=>
        #[automatically_derived]
        #[allow(unused_variables, clippy::all, clippy::pedantic)]
        impl ::granary_sdk::__private::Grain for #self_ty {
            fn dispatch(
                &mut self,
                ctx: &mut ::granary_sdk::Ctx,
                method: &str,
                payload: &[u8],
            ) -> ::core::result::Result<
                ::granary_sdk::__private::Handled,
                ::granary_sdk::__private::GrainError,
            > {
                match method {
                    #(#arms)*
                    _ => ::core::result::Result::Err(::granary_sdk::__private::unknown_method(method)),
                }
            }
            #(#hooks)*
        }
    };
    Ok(quote! {
        #block
        #grain_impl
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[doc(hidden)]
            type __GranaryExport = ::granary_sdk::__private::Export<#self_ty>;
            ::granary_sdk::bindings::export!(__GranaryExport with_types_in ::granary_sdk::bindings);
        };
    })
}

/// The part of a wrongly annotated item to point at.
fn item_head(item: &Item) -> TokenStream2 {
    match item {
        Item::Struct(s) => {
            let (token, ident) = (&s.struct_token, &s.ident);
            quote!(#token #ident)
        }
        Item::Enum(e) => {
            let (token, ident) = (&e.enum_token, &e.ident);
            quote!(#token #ident)
        }
        Item::Fn(f) => {
            let (token, ident) = (&f.sig.fn_token, &f.sig.ident);
            quote!(#token #ident)
        }
        Item::Trait(t) => {
            let (token, ident) = (&t.trait_token, &t.ident);
            quote!(#token #ident)
        }
        Item::Mod(m) => {
            let (token, ident) = (&m.mod_token, &m.ident);
            quote!(#token #ident)
        }
        other => quote!(#other),
    }
}

fn check_impl(block: &ItemImpl) -> syn::Result<()> {
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new_spanned(
            path,
            "#[grain] goes on an inherent `impl` block, not on a trait implementation",
        ));
    }
    if !block.generics.params.is_empty() || block.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &block.generics,
            "a #[grain] impl cannot be generic: a component holds one concrete grain type",
        ));
    }
    if let Some(unsafety) = &block.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "a #[grain] impl cannot be `unsafe`",
        ));
    }
    Ok(())
}

/// A parameter after the receiver.
enum Param {
    /// `&mut Ctx`.
    Ctx,
    /// Anything else: the payload argument of a message, or a hook's input.
    Value(Box<PatType>),
}

/// What a method or hook looks like to the dispatcher.
struct Shape {
    /// The receiver is `&mut self`.
    mutable: bool,
    params: Vec<Param>,
}

/// How a function's result is handled.
enum Output {
    /// `-> T`, including `()`.
    Value,
    /// `-> Result<T, E>` (any type whose last path segment is `Result`).
    Fallible,
}

fn shape(sig: &Signature, what: &str) -> syn::Result<Shape> {
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            token,
            format!("{what} cannot be `async`: grain turns are synchronous"),
        ));
    }
    if let Some(token) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            token,
            format!("{what} cannot be `unsafe`"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("{what} cannot be generic: its argument type must be known to decode it"),
        ));
    }
    let Some(receiver) = sig.receiver() else {
        return Err(syn::Error::new_spanned(
            &sig.ident,
            format!(
                "{what} must take `&self` or `&mut self`; make an associated function \
                 private or move it to another impl block"
            ),
        ));
    };
    if receiver.colon_token.is_some() {
        return Err(syn::Error::new_spanned(
            receiver,
            format!("{what} must take plain `&self` or `&mut self`, without a type"),
        ));
    }
    if receiver.reference.is_none() {
        return Err(syn::Error::new_spanned(
            receiver,
            format!("{what} must take `&self` or `&mut self`, not `self` by value"),
        ));
    }
    let mut params = Vec::new();
    let mut seen_ctx = false;
    for input in sig.inputs.iter().skip(1) {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        let ty = ungroup(&typed.ty);
        if is_ctx(ty, true) {
            if seen_ctx {
                return Err(syn::Error::new_spanned(
                    typed,
                    "only one `&mut Ctx` parameter",
                ));
            }
            seen_ctx = true;
            params.push(Param::Ctx);
        } else if is_ctx(ty, false) {
            return Err(syn::Error::new_spanned(
                &typed.ty,
                "take the context as `&mut Ctx`",
            ));
        } else {
            params.push(Param::Value(Box::new(typed.clone())));
        }
    }
    Ok(Shape {
        mutable: receiver.mutability.is_some(),
        params,
    })
}

fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => ungroup(&group.elem),
        Type::Paren(paren) => ungroup(&paren.elem),
        other => other,
    }
}

/// Whether `ty` is `&mut Ctx` (`mutable`) or `&Ctx` (not `mutable`), with any path to `Ctx`.
fn is_ctx(ty: &Type, mutable: bool) -> bool {
    let Type::Reference(reference) = ty else {
        return false;
    };
    if reference.mutability.is_some() != mutable {
        return false;
    }
    let Type::Path(path) = ungroup(&reference.elem) else {
        return false;
    };
    path.qself.is_none()
        && path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Ctx" && last.arguments.is_none())
}

fn output(sig: &Signature) -> Output {
    let ReturnType::Type(_, ty) = &sig.output else {
        return Output::Value;
    };
    match ungroup(ty) {
        Type::Path(path)
            if path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "Result") =>
        {
            Output::Fallible
        }
        _ => Output::Value,
    }
}

fn message(function: &ImplItemFn, name: &str) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    let shape = shape(sig, "a grain method")?;
    let values: Vec<&PatType> = shape
        .params
        .iter()
        .filter_map(|p| match p {
            Param::Value(arg) => Some(&**arg),
            Param::Ctx => None,
        })
        .collect();
    if let Some(extra) = values.get(1) {
        return Err(syn::Error::new_spanned(
            extra,
            "a grain method takes at most one payload argument (besides `ctx: &mut Ctx`); \
             put the fields in a struct that derives `Deserialize`",
        ));
    }
    let decode = match values.first() {
        Some(arg) => {
            let ty = &arg.ty;
            if let Type::Reference(_) = ungroup(ty) {
                return Err(syn::Error::new_spanned(
                    ty,
                    "the payload argument must be an owned type (e.g. `String`, not `&str`)",
                ));
            }
            quote_spanned! {ty.span()=>
                let __arg: #ty = ::granary_sdk::__private::decode_arg::<#ty>(method, payload)?;
            }
        }
        None => quote! { ::granary_sdk::__private::no_arg(method, payload)?; },
    };
    let args = shape.params.iter().map(|p| match p {
        Param::Ctx => quote!(ctx),
        Param::Value(_) => quote!(__arg),
    });
    let ident = &sig.ident;
    let call = quote_spanned! {ident.span()=> Self::#ident(self, #(#args),*) };
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => ident.span(),
    };
    let reply = match output(sig) {
        Output::Value => quote_spanned! {ret_span=> ::granary_sdk::__private::reply(#call)? },
        Output::Fallible => {
            quote_spanned! {ret_span=> ::granary_sdk::__private::reply_fallible(#call)? }
        }
    };
    let mutable = shape.mutable;
    Ok(quote! {
        #name => {
            #decode
            let reply = #reply;
            ::core::result::Result::Ok(::granary_sdk::__private::Handled {
                reply,
                persist: #mutable,
            })
        }
    })
}

fn hook(function: &ImplItemFn, name: &str) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    let (expected, inputs, method, signature) = match name {
        "on_activate" => (
            0,
            vec![],
            quote!(hook_activate),
            quote!(ctx: &mut ::granary_sdk::Ctx),
        ),
        "on_deactivate" => (
            1,
            vec![quote!(reason)],
            quote!(hook_deactivate),
            quote!(ctx: &mut ::granary_sdk::Ctx, reason: ::granary_sdk::DeactivationReason),
        ),
        "on_timer" => (
            1,
            vec![quote!(name)],
            quote!(hook_timer),
            quote!(ctx: &mut ::granary_sdk::Ctx, name: &str),
        ),
        _ => (
            2,
            vec![quote!(name), quote!(tick)],
            quote!(hook_reminder),
            quote!(ctx: &mut ::granary_sdk::Ctx, name: &str, tick: ::granary_sdk::ReminderTick),
        ),
    };
    let what = format!("the `{name}` hook");
    let shape = shape(sig, &what)?;
    let values = shape
        .params
        .iter()
        .filter(|p| matches!(p, Param::Value(_)))
        .count();
    if values != expected {
        let usage = match name {
            "on_activate" => "fn on_activate(&mut self, ctx: &mut Ctx)",
            "on_deactivate" => {
                "fn on_deactivate(&mut self, ctx: &mut Ctx, reason: DeactivationReason)"
            }
            "on_timer" => "fn on_timer(&mut self, ctx: &mut Ctx, name: &str)",
            _ => "fn on_reminder(&mut self, ctx: &mut Ctx, name: &str, tick: ReminderTick)",
        };
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            format!("{what} has the signature `{usage}` (`ctx` is optional)"),
        ));
    }
    let mut inputs = inputs.into_iter();
    let args = shape.params.iter().map(|p| match p {
        Param::Ctx => quote!(ctx),
        Param::Value(_) => inputs.next().unwrap_or_default(),
    });
    let ident = &sig.ident;
    let call = quote_spanned! {ident.span()=> Self::#ident(self, #(#args),*) };
    let run = match (&sig.output, output(sig)) {
        (_, Output::Fallible) => {
            quote_spanned! {sig.output.span()=> ::granary_sdk::__private::hook_fallible(#call)?; }
        }
        (ReturnType::Default, Output::Value) => quote! { #call; },
        (ReturnType::Type(_, ty), Output::Value) => {
            if !matches!(ungroup(ty), Type::Tuple(t) if t.elems.is_empty()) {
                return Err(syn::Error::new_spanned(
                    ty,
                    format!("{what} returns `()` or `Result<(), E>` with `E: Display`"),
                ));
            }
            quote! { #call; }
        }
    };
    let mutable = shape.mutable;
    Ok(quote! {
        fn #method(&mut self, #signature) -> ::core::result::Result<bool, ::std::string::String> {
            #run
            ::core::result::Result::Ok(#mutable)
        }
    })
}
