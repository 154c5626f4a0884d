//! The NIF surface of pybeam (Erlang module `py_nif`). It only translates: terms to owned
//! values and back, resources to loops. Everything else lives in `pybeam_core`.

mod atoms;
mod decode;
mod encode;
mod kept_env;
mod loop_nif;
mod runtime_nif;
mod shared_binary;

use rustler::{Env, Term};

fn load(_env: Env, _info: Term) -> bool {
    // Must happen before any Python extension module is imported; see docs/architecture.md.
    match pybeam_core::interpreter::promote_libpython_to_global() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("pybeam: {e}");
            false
        }
    }
}

rustler::init!("py_nif", load = load);
