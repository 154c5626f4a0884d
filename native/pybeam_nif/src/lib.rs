//! The NIF surface of pybeam (Erlang module `py_nif`). It only translates: terms to owned
//! values and back, resources to loops. Everything else lives in `pybeam_core`.

mod atoms;
mod callback_nif;
mod child_nif;
mod decode;
mod encode;
mod kept_env;
mod link_factory;
mod loop_nif;
mod runtime_nif;
mod select;
mod shared_binary;

use rustler::{Env, Term};

fn load(env: Env, _info: Term) -> bool {
    // Must happen before any Python extension module is imported; see docs/architecture.md.
    if let Err(e) = pybeam_core::interpreter::promote_libpython_to_global() {
        eprintln!("pybeam: {e}");
        return false;
    }
    pybeam_core::aio::link::set_link_factory(Box::new(link_factory::new_link));
    pybeam_core::callbacks::set_beam(Box::new(callback_nif::NifBeam));
    select::open_type(env)
}

rustler::init!("py_nif", load = load);
