//! The `tokencache` command-line tool: issue, validate, list, revoke, delete, purge, rotate,
//! limit and inspect tokens in a store file, act on an owner's tokens, set metadata, import
//! keys minted elsewhere, and `stress`, the benchmark. Built with the `cli`
//! feature; `tokencache --help` lists the commands.

mod cli;
mod stress;

fn main() -> std::process::ExitCode {
    cli::main()
}
