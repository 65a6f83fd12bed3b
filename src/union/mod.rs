//! The union filesystem: lower layers plus one upper layer, merged into one tree.
