//! `tower-responses`: the proxy, its demo and its status check (`tower-responses --help`).

// jemalloc rather than glibc's malloc: a proxied stream makes about 120 small allocations
// (hyper, http's extensions, the layers), an eighth of its instructions under glibc's; and
// jemalloc holds 1,000 open streams in 39 KiB each where glibc needs 48 (mimalloc, as fast,
// needed 67). BENCHMARKS.md has the method.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tower_responses::proxy::cli::main()
}
