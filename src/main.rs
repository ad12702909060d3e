//! The `switchyard` command; everything it does is in [`switchyard::cli`].

/// mimalloc instead of glibc's malloc: every request allocates its future (a few KiB) and two read buffers, sizes
/// glibc serves from its slow paths (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
