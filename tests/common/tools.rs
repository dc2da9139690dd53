//! External programs some tests drive (Chromium, promtool, the deploy/ checkers): found through
//! the environment variable `scripts/test.sh` exports, else on `PATH`. Missing ones skip the
//! test, or fail it when `CX_REQUIRE_EXTERNAL` is set, as a missing broker does.

use std::path::PathBuf;

/// The program named by `$env`, else `name` on `PATH`; `None` (test skipped) when neither exists
/// and `CX_REQUIRE_EXTERNAL` is unset. `script` is what installs it.
pub fn tool(env: &str, name: &str, script: &str) -> Option<PathBuf> {
    let from_env = std::env::var_os(env).filter(|v| !v.is_empty()).map(PathBuf::from);
    let found = from_env.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    match found {
        Some(p) if p.is_file() => Some(p),
        _ if std::env::var_os("CX_REQUIRE_EXTERNAL").is_some() => {
            panic!("{name} not found ({env} unset or wrong) but CX_REQUIRE_EXTERNAL is set: run {script}")
        }
        _ => {
            eprintln!("skipped: {name} not found (set {env}, or run {script})");
            None
        }
    }
}

/// A fresh directory for one test's output under `target/test-output/<name>`, kept after the
/// test for a person to look at.
pub fn output_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-output")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
