//! Which tensor backend a run uses. burn 0.22 picks the backend at run time through `Device`;
//! which GPU backends exist depends on hone's cargo features (`wgpu` default, `cuda` opt-in).

/// The `backend:` a recipe asks for.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// CUDA when hone was built with `--features cuda`, else the CPU (wgpu only when asked for).
    #[default]
    Auto,
    /// burn's flex CPU backend.
    Cpu,
    /// wgpu (Vulkan, Metal, DX12).
    Wgpu,
    /// NVIDIA CUDA (build hone with `--features cuda`).
    Cuda,
}

/// The backend a stage actually runs on, as recorded in action keys and the lockfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }
}

/// Why a backend cannot be used: the one asked for is not compiled into this build of hone,
/// or its name is not a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// `cuda` asked for, but hone was built without the `cuda` feature.
    #[error(
        "backend `cuda` is not compiled into this hone: rebuild with `cargo build --release --features cuda`"
    )]
    CudaNotCompiled,
    /// `wgpu` asked for, but hone was built without the `wgpu` feature.
    #[error("backend `wgpu` is not compiled into this hone: rebuild with `--features wgpu`")]
    WgpuNotCompiled,
    /// A device was asked of a backend this build has no device for.
    #[error(
        "backend `{}` is not compiled into this hone (cargo features `wgpu`, `cuda`)",
        .kind.name()
    )]
    NoDevice { kind: BackendKind },
    /// A backend name that is none of `auto`, `cpu`, `wgpu`, `cuda`.
    #[error("unknown backend `{0}` (auto, cpu, wgpu, cuda)")]
    Unknown(String),
}

/// Whether `choice` can work in this build, with what to do if not.
/// Bytes of memory this machine has (`MemTotal`), where the system says.
pub fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Why a model of `parameters` cannot be trained here, if it cannot: full training in f32
/// holds the weights, their gradients and AdamW's two moments, 16 bytes a parameter.
pub fn training_memory_problem(parameters: f64) -> Option<String> {
    let needed = parameters * 16.0;
    let host = host_memory()? as f64;
    (needed > host).then(|| {
        format!(
            "a model of about {parameters:.3e} parameters needs about {:.1} GiB to train (weights, gradients and AdamW state in f32); this machine has {:.1} GiB",
            needed / f64::from(1u32 << 30),
            host / f64::from(1u32 << 30)
        )
    })
}

pub fn check_available(choice: BackendChoice) -> Result<(), BackendError> {
    match choice {
        BackendChoice::Cuda if !cfg!(feature = "cuda") => Err(BackendError::CudaNotCompiled),
        BackendChoice::Wgpu if !cfg!(feature = "wgpu") => Err(BackendError::WgpuNotCompiled),
        _ => Ok(()),
    }
}

/// Resolves `auto`: CUDA when hone was built with the `cuda` feature (asking for that build
/// is asking for the GPU), else the CPU. wgpu is never picked implicitly: it is compiled in by
/// default, and a software Vulkan adapter (lavapipe) would be far slower than flex.
pub fn resolve(choice: BackendChoice) -> BackendKind {
    match choice {
        BackendChoice::Auto if cfg!(feature = "cuda") => BackendKind::Cuda,
        BackendChoice::Auto | BackendChoice::Cpu => BackendKind::Cpu,
        BackendChoice::Wgpu => BackendKind::Wgpu,
        BackendChoice::Cuda => BackendKind::Cuda,
    }
}

/// The burn device of a backend (the plain device; training takes `.autodiff()` of it).
pub fn device(kind: BackendKind) -> Result<burn::tensor::Device, BackendError> {
    match kind {
        BackendKind::Cpu => {
            init_cpu();
            Ok(burn::tensor::Device::flex())
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(burn::tensor::Device::wgpu(
            burn::tensor::DeviceKind::DefaultDevice,
        )),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(burn::tensor::Device::cuda(0)),
        #[allow(unreachable_patterns)]
        other => Err(BackendError::NoDevice { kind: other }),
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "cuda" => Ok(BackendChoice::Cuda),
            _ => Err(BackendError::Unknown(s.to_owned())),
        }
    }
}

/// The devices one training stage runs on at once (`train: { devices: ... }`): a count (the
/// backend's first N: CUDA 0..N, wgpu's discrete GPUs 0..N, or the CPU N times) or a list
/// (`[0, 1]`, `[cuda:0, cuda:1]`, `[cpu, cpu]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Devices {
    Count(usize),
    List(Vec<DeviceRef>),
}

/// One entry of a device list: an index of the stage's backend, or `cpu`, `cuda:N`, `wgpu:N`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum DeviceRef {
    Index(usize),
    Name(String),
}

impl Devices {
    pub fn count(&self) -> usize {
        match self {
            Devices::Count(n) => *n,
            Devices::List(l) => l.len(),
        }
    }
}

/// The devices of `spec` on backend `kind` (plain devices; training takes `.autodiff()` of
/// them). Every entry must be a device of that backend.
pub fn devices(kind: BackendKind, spec: &Devices) -> Result<Vec<burn::tensor::Device>, String> {
    let refs: Vec<DeviceRef> = match spec {
        Devices::Count(0) => return Err("`devices` must be at least 1".into()),
        Devices::Count(n) => (0..*n).map(DeviceRef::Index).collect(),
        Devices::List(l) if l.is_empty() => return Err("`devices` must name a device".into()),
        Devices::List(l) => l.clone(),
    };
    refs.iter()
        .map(|r| {
            let index = match r {
                DeviceRef::Index(i) => Some(*i),
                DeviceRef::Name(n) => match (n.split_once(':'), n.as_str()) {
                    (None, "cpu") if kind == BackendKind::Cpu => None,
                    (Some((k, i)), _) if k == kind.name() => Some(
                        i.parse::<usize>()
                            .map_err(|_| format!("device `{n}`: `{i}` is not a device index"))?,
                    ),
                    _ => {
                        return Err(format!(
                            "device `{n}` is not a device of the stage's backend `{}`",
                            kind.name()
                        ));
                    }
                },
            };
            device_at(kind, index)
        })
        .collect()
}

fn device_at(kind: BackendKind, index: Option<usize>) -> Result<burn::tensor::Device, String> {
    match kind {
        // The CPU is one device however many times it is listed: replicas share its threads.
        BackendKind::Cpu => device(kind).map_err(|e| e.to_string()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(burn::tensor::Device::wgpu(
            burn::tensor::DeviceKind::DiscreteGpu(index.unwrap_or(0)),
        )),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(burn::tensor::Device::cuda(index.unwrap_or(0))),
        #[allow(unreachable_patterns)]
        other => {
            let _ = index;
            Err(BackendError::NoDevice { kind: other }.to_string())
        }
    }
}

/// Prepares the CPU for training: flush-to-zero and denormals-are-zero on every thread burn
/// computes on (this thread and the rayon pool). Subnormal floats are handled in microcode on
/// x86 and made one measured backward pass 20x slower; flushing them changes results only
/// below 1.2e-38. Call once, before the first tensor operation; later calls do nothing.
pub fn init_cpu() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        keep_freed_memory();
        set_flush_to_zero();
        // burn's flex backend runs on the global rayon pool; configure it before first use.
        let _ = rayon::ThreadPoolBuilder::new()
            .start_handler(|_| set_flush_to_zero())
            .build_global();
    });
}

/// mimalloc (the allocator of hone's binary and benches) hands pages that fall empty back to
/// the OS after a delay (1 s in mimalloc 3, the version libmimalloc-sys builds); burn frees and
/// allocates the same large buffers at every step, so steps kept paying the kernel for zeroing
/// fresh pages. Never purging keeps them mapped for the next step's buffers, at some resident
/// memory (the README's Backends section has both measured). Does nothing under another
/// allocator.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's option enum (milliseconds; -1: never purge).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // mimalloc's own environment variable, when set, wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one global mimalloc option; called once, before the worker threads start.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

#[cfg(test)]
#[test]
fn init_cpu_turns_off_mimallocs_purging() {
    let get = || unsafe { libmimalloc_sys::mi_option_get(15) };
    if let Ok(v) = std::env::var("MIMALLOC_PURGE_DELAY") {
        // The user's setting is left alone.
        init_cpu();
        assert_eq!(get().to_string(), v.trim());
        return;
    }
    // Option 15 holds mimalloc 3's purge-delay default, 1000 ms (its neighbours default to
    // 0: eager_commit_delay and use_numa_nodes), until init_cpu sets -1.
    let before = get();
    assert!(before == 1000 || before == -1, "option 15 is {before}");
    init_cpu();
    assert_eq!(get(), -1);
}

#[cfg(target_arch = "x86_64")]
fn set_flush_to_zero() {
    // MXCSR bit 15 = flush to zero, bit 6 = denormals are zero.
    let mut csr: u32 = 0;
    // SAFETY: stmxcsr/ldmxcsr read and write this thread's SSE control register only.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= 0x8040;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn set_flush_to_zero() {}

#[cfg(test)]
mod tests {
    /// The per-thread setting that `init_cpu` applies to its caller and to every rayon worker.
    /// (Calling `init_cpu` here proved nothing: it acts once a process, on the thread of the
    /// first test that called it, so this test failed whenever another one came first.)
    #[test]
    fn flush_to_zero_flushes_subnormals() {
        super::set_flush_to_zero();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        let half = std::hint::black_box(tiny) / std::hint::black_box(2.0f32);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(half, 0.0, "subnormal results are flushed to zero");
        }
    }
}
