// mimalloc: burn allocates and frees large buffers at a high rate; the system allocator's page
// faults were ~15% of a measured training profile.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // burn puts a few things on its *default* device (a restored optimizer state, before the
    // next step moves it to the parameters' device); with wgpu compiled in that default is a
    // GPU, whose start-up is slow and fails on machines without Vulkan. hone names its devices
    // explicitly everywhere else, so the CPU is the right default.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    hone::backend::init_cpu();
    hone::cli::main()
}
