//! Finding and loading the ONNX Runtime shared library, once per process.

use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The file that `make ort` installs.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// The library could not be found or loaded; the message says which command fixes it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(String);

/// Picks the ONNX Runtime library: the `--ort-library` flag, then `ORT_DYLIB_PATH`, then
/// `server.ort_library` from routes.yaml, then `.ort/` in the working directory or in a folder
/// above the executable (so `target/release/modelgate` finds the checkout's `.ort/`).
pub fn locate(flag: Option<&Path>, config: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = config {
        return p.to_path_buf();
    }
    let local = Path::new(".ort").join(LIBRARY_FILE);
    if local.exists() {
        return local;
    }
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().skip(1).map(|dir| dir.join(".ort").join(LIBRARY_FILE)).find(|p| p.exists()));
    from_exe.unwrap_or(local)
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime from `library` (on first use) and returns the process-wide environment.
/// Later calls return the same environment whatever path they pass.
pub fn environment(library: &Path) -> Result<Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    let _guard = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env.clone());
    }
    if !library.is_file() {
        return Err(RuntimeError(format!(
            "ONNX Runtime library not found at {}. Run `make ort` in the modelgate checkout (pip downloads the \
             pinned onnxruntime==1.31.1 wheel and checks its sha256), or point ORT_DYLIB_PATH, --ort-library or \
             server.ort_library at {LIBRARY_FILE}",
            library.display()
        )));
    }
    let env = ort::init_from(library)
        .map_err(|e| RuntimeError(format!("cannot load ONNX Runtime from {}: {e}", library.display())))?
        .with_name("modelgate")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError(format!("cannot start ONNX Runtime from {}: {e}", library.display())))?;
    Ok(ENVIRONMENT.get_or_init(|| env).clone())
}
