//! `tower-responses`: the proxy, its demo and its status check (`tower-responses --help`).

fn main() -> std::process::ExitCode {
    tower_responses::proxy::cli::main()
}
