//! flow's node library. Adding a node type: one file, plus one `register` line in [`library`].

use flow_engine::node::Registry;

pub mod shell;

/// Every node type flow ships.
pub fn library() -> Registry {
    let mut registry = Registry::new();
    registry.register(shell::Shell);
    registry
}
