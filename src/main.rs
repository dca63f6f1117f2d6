//! The `tokencache` command-line tool (work in progress on main).
fn main() {}
