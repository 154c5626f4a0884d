//! The cdylib must find the same libpython it was built against, whatever LD_LIBRARY_PATH says.
fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    pyo3_build_config::add_libpython_rpath_link_args();
}
