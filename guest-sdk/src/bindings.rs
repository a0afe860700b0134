//! Raw bindings to the `grain` world, generated from `wit/grain.wit`. No logic lives here.
#![allow(missing_docs)]

wit_bindgen::generate!({
    path: "../wit",
    world: "grain",
    pub_export_macro: true,
    default_bindings_module: "granary_sdk::bindings",
});
