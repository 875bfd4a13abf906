//! Placeholder: the planner benchmark lands with the sync rules (issue 3).
fn main() {}
