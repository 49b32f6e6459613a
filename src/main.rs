// mimalloc: burn allocates and frees large buffers at a high rate; the system allocator's page
// faults were ~15% of a measured training profile.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hone::cli::main()
}
