//! Bakes the identity of the Python that pyo3 builds against into the crate, so that the
//! runtime initialises exactly that interpreter (its stdlib, not whichever `python3` is on PATH).
use std::process::Command;

fn main() {
    let config = pyo3_build_config::get();
    let executable = config
        .executable()
        .map(str::to_owned)
        .expect("pyo3 found no Python executable; set PYO3_PYTHON");
    let probe = Command::new(&executable)
        .args([
            "-c",
            "import sys; print(sys.base_prefix); print(sys.executable); print('%d.%d' % sys.version_info[:2])",
        ])
        .output()
        .expect("could not run the build-time Python");
    assert!(probe.status.success(), "build-time Python failed: {probe:?}");
    let text = String::from_utf8(probe.stdout).expect("non-UTF-8 Python paths are not supported");
    let mut lines = text.lines();
    let home = lines.next().unwrap_or_default();
    let exe = lines.next().unwrap_or_default();
    let version = lines.next().unwrap_or_default();
    println!("cargo:rustc-env=PYBEAM_PYTHON_HOME={home}");
    println!("cargo:rustc-env=PYBEAM_PYTHON_EXECUTABLE={exe}");
    println!("cargo:rustc-env=PYBEAM_PYTHON_VERSION={version}");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    // Test binaries of this crate embed Python too, so they need the rpath as well.
    pyo3_build_config::add_libpython_rpath_link_args();
}
