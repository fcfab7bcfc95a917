//! The one `bindgen!` over `wit/`: the `agent` world, a superset of `skill`
//! (a skill component simply does not import `skills`).

wasmtime::component::bindgen!({
    world: "agent",
    path: "wit",
    imports: { default: async },
    exports: { default: async },
});
