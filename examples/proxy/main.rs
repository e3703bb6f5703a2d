//! The tower-responses proxy as an example: a thin wrapper over the `tower-responses` binary's
//! command line ([`tower_responses::proxy::cli`]), so it takes the same arguments and
//! subcommands (`serve`, the default; `demo`; `status`), and scripts that ran it keep working:
//!
//! ```text
//! cargo run --all-features --example proxy -- --demo
//! cargo run --all-features --example proxy -- --upstream https://api.openai.com/v1 --credential env:OPENAI_API_KEY
//! ```
//!
//! `cargo install --path . --features proxy` installs the same thing as `tower-responses`.

fn main() -> std::process::ExitCode {
    tower_responses::proxy::cli::main()
}
