//! Interpreter start-up and identity, plus the no-op NIFs that benchmarks use as baselines.

use std::ffi::CStr;

use rustler::{Atom, Encoder, Env, Term};

use pybeam_core::interpreter::{self, InterpreterConfig};

use crate::{atoms, encode};

fn strings(term: Term<'_>) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for item in crate::decode::proper_list(term)? {
        let bin = rustler::Binary::from_iolist(item).ok()?;
        out.push(String::from_utf8(bin.as_slice().to_vec()).ok()?);
    }
    Some(out)
}

fn config_value<'a>(config: Term<'a>, key: &str) -> Option<Term<'a>> {
    let key = Atom::from_str(config.get_env(), key).ok()?;
    config.map_get(key).ok()
}

/// `init_python(#{python_path => [Dir], venv => Dir | undefined, none_as => Atom})`.
/// Initialises the interpreter the first time (tens of milliseconds, hence dirty), then only
/// adds paths. Python code never runs here.
#[rustler::nif(schedule = "DirtyCpu")]
fn init_python<'a>(env: Env<'a>, config: Term<'a>) -> Term<'a> {
    if !config.is_map() {
        return (atoms::badarg(), "config must be a map").encode(env);
    }
    let python_path = match config_value(config, "python_path").map(strings) {
        None => Vec::new(),
        Some(Some(p)) => p,
        Some(None) => return (atoms::badarg(), "python_path must be a list of strings").encode(env),
    };
    let venv = config_value(config, "venv")
        .filter(|t| !t.is_atom())
        .and_then(|t| rustler::Binary::from_iolist(t).ok())
        .and_then(|b| String::from_utf8(b.as_slice().to_vec()).ok());
    if let Some(none_as) = config_value(config, "none_as") {
        let which = if atoms::undefined() == none_as {
            1
        } else if atoms::nil() == none_as {
            2
        } else {
            0
        };
        encode::set_none_atom(which);
    }
    match interpreter::initialize(&InterpreterConfig { python_path, venv }) {
        Ok(()) => atoms::ok().encode(env),
        Err(msg) => (atoms::error(), encode::binary(env, msg.as_bytes())).encode(env),
    }
}

/// Which Python this library runs: the build-time identity and the runtime version string.
#[rustler::nif]
fn python_info<'a>(env: Env<'a>) -> Term<'a> {
    // SAFETY: Py_GetVersion returns a static string and needs neither the GIL nor init.
    let runtime = unsafe { CStr::from_ptr(pyo3::ffi::Py_GetVersion()) }.to_string_lossy().into_owned();
    let pairs = [
        ("home", interpreter::BUILD_PYTHON_HOME.to_string()),
        ("executable", interpreter::BUILD_PYTHON_EXECUTABLE.to_string()),
        ("build_version", interpreter::BUILD_PYTHON_VERSION.to_string()),
        ("version", runtime),
    ];
    let keys: Vec<Term> = pairs
        .iter()
        .map(|(k, _)| Atom::from_str(env, k).map(|a| a.encode(env)).unwrap_or_else(|_| atoms::error().encode(env)))
        .collect();
    let values: Vec<Term> = pairs.iter().map(|(_, v)| encode::binary(env, v.as_bytes())).collect();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| atoms::error().encode(env))
}

/// Python objects handed to the reaper and not yet released (tests check it drains).
#[rustler::nif]
fn reaper_pending() -> usize {
    pybeam_core::reaper::pending()
}

/// Baseline for benchmarks: the cost of a plain NIF call.
#[rustler::nif]
fn noop() -> Atom {
    atoms::ok()
}

/// Baseline for benchmarks: the cost of a round trip through a dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn noop_dirty() -> Atom {
    atoms::ok()
}
