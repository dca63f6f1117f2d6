//! The `tokencache` command-line tool: issue, validate, list, revoke and inspect tokens in a
//! store file. Built with the `cli` feature; `tokencache --help` lists the commands.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
