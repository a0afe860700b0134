//! The generated bindings of the `grain` world; no logic lives here.

wasmtime::component::bindgen!({
    world: "grain",
    path: "../wit",
    imports: {
        // `call` awaits another grain's turn; every other import answers at once.
        "granary:grain/calls.call": async,
        default: trappable,
    },
    exports: { default: async },
});

pub use self::granary::grain::types;
