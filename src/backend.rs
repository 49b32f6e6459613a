//! Which tensor backend a run uses. burn 0.22 picks the backend at run time through `Device`;
//! which GPU backends exist depends on hone's cargo features (`wgpu` default, `cuda` opt-in).

use crate::recipe::types::BackendChoice;

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

/// Whether `choice` can work in this build, with what to do if not.
pub fn check_available(choice: BackendChoice) -> Result<(), String> {
    match choice {
        BackendChoice::Cuda if !cfg!(feature = "cuda") => {
            Err("backend `cuda` is not compiled into this hone: rebuild with `cargo build --release --features cuda`".into())
        }
        BackendChoice::Wgpu if !cfg!(feature = "wgpu") => {
            Err("backend `wgpu` is not compiled into this hone: rebuild with `--features wgpu`".into())
        }
        _ => Ok(()),
    }
}

/// Resolves `auto`. Until a stage needs a device, `auto` means the CPU: probing a GPU adapter
/// costs time, and choosing one silently would change action keys from machine to machine.
pub fn resolve(choice: BackendChoice) -> BackendKind {
    match choice {
        BackendChoice::Auto | BackendChoice::Cpu => BackendKind::Cpu,
        BackendChoice::Wgpu => BackendKind::Wgpu,
        BackendChoice::Cuda => BackendKind::Cuda,
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "wgpu" => Ok(BackendChoice::Wgpu),
            "cuda" => Ok(BackendChoice::Cuda),
            _ => Err(format!("unknown backend `{s}` (auto, cpu, wgpu, cuda)")),
        }
    }
}
