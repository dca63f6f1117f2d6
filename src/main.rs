//! The `tokencache` command-line tool: issue, validate, list, revoke, delete, purge, rotate,
//! limit and inspect tokens in a store file, and `stress`, the benchmark. Built with the `cli`
//! feature; `tokencache --help` lists the commands.

mod cli;
mod stress;

fn main() -> std::process::ExitCode {
    cli::main()
}
