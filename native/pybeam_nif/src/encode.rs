//! Owned `Value`s and outcomes -> Erlang terms, built in a message env on the loop thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

use rustler::types::tuple::make_tuple;
use rustler::{Atom, Encoder, Env, NewBinary, Term};

use pybeam_core::value::bigint_to_etf;
use pybeam_core::{Bytes, CallError, Outcome, Value};

use crate::atoms;
use crate::shared_binary;

/// Which atom Python's `None` becomes: 0 `none`, 1 `undefined`, 2 `nil`.
static NONE_AS: AtomicU8 = AtomicU8::new(0);

pub fn set_none_atom(which: u8) {
    NONE_AS.store(which.min(2), Ordering::Relaxed);
}

fn none_atom() -> Atom {
    match NONE_AS.load(Ordering::Relaxed) {
        1 => atoms::undefined(),
        2 => atoms::nil(),
        _ => atoms::none(),
    }
}

pub fn outcome<'a>(env: Env<'a>, outcome: &Outcome) -> Term<'a> {
    match outcome {
        Ok(v) => (atoms::ok(), value(env, v)).encode(env),
        Err(e) => (atoms::error(), call_error(env, e)).encode(env),
    }
}

pub fn call_error<'a>(env: Env<'a>, e: &CallError) -> Term<'a> {
    match e {
        CallError::Python(p) => (
            atoms::python(),
            binary(env, p.type_name.as_bytes()),
            binary(env, p.message.as_bytes()),
            binary(env, p.traceback.as_bytes()),
        )
            .encode(env),
        CallError::UnsupportedType(name) => {
            (atoms::unsupported_type(), binary(env, name.as_bytes())).encode(env)
        }
        CallError::TooDeep(limit) => (atoms::too_deep(), *limit).encode(env),
        CallError::Closed => atoms::loop_destroyed().encode(env),
        // Never delivered (nobody waits), but encoded for completeness.
        CallError::Interrupted => atoms::timeout().encode(env),
        CallError::Internal(msg) => (atoms::internal_error(), binary(env, msg.as_bytes())).encode(env),
        CallError::Cancelled => atoms::cancelled().encode(env),
        CallError::GatherFailed(failures) => {
            let items: Vec<Term<'a>> = failures.iter().map(|(i, e)| (*i, call_error(env, e)).encode(env)).collect();
            (atoms::gather_failed(), items).encode(env)
        }
        CallError::NoAsyncio => atoms::no_asyncio_loop().encode(env),
    }
}

pub fn value<'a>(env: Env<'a>, v: &Value) -> Term<'a> {
    match v {
        Value::Int(i) => i.encode(env),
        Value::Float(f) if f.is_nan() => atoms::nan().encode(env),
        Value::Float(f) if f.is_infinite() && *f > 0.0 => atoms::infinity().encode(env),
        Value::Float(f) if f.is_infinite() => atoms::neg_infinity().encode(env),
        Value::Float(f) => f.encode(env),
        Value::Bool(b) => b.encode(env),
        Value::None => none_atom().encode(env),
        Value::Atom(name) => existing_atom(env, name).unwrap_or_else(|| binary(env, name.as_bytes())),
        Value::Binary(b) | Value::Bytes(b) => bytes(env, b),
        Value::List(items) => items.iter().map(|i| value(env, i)).collect::<Vec<_>>().encode(env),
        Value::Tuple(items) => {
            let terms: Vec<Term<'a>> = items.iter().map(|i| value(env, i)).collect();
            make_tuple(env, &terms)
        }
        Value::Map(pairs) => map(env, pairs),
        Value::BigInt { negative, magnitude } => from_etf(env, &bigint_to_etf(*negative, magnitude)),
        Value::Pid(etf) | Value::Ref(etf) => from_etf(env, etf),
    }
}

fn map<'a>(env: Env<'a>, pairs: &[(Value, Value)]) -> Term<'a> {
    let keys: Vec<Term<'a>> = pairs.iter().map(|(k, _)| value(env, k)).collect();
    let values: Vec<Term<'a>> = pairs.iter().map(|(_, v)| value(env, v)).collect();
    if let Ok(m) = Term::map_from_term_arrays(env, &keys, &values) {
        return m;
    }
    // Distinct Python keys can meet as one Erlang key ('a' and b'a'); the later one wins,
    // as it would in a dict update.
    let mut m = Term::map_new(env);
    for (k, v) in keys.into_iter().zip(values) {
        if let Ok(next) = m.map_put(k, v) {
            m = next;
        }
    }
    m
}

/// Binaries this large make a router process hold memory until it garbage-collects.
pub const LARGE_BINARY: usize = 64 * 1024;

thread_local! {
    static LARGE_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// Bytes of large binaries encoded on this thread since the last call; resets the count.
pub fn take_large_bytes() -> usize {
    LARGE_BYTES.with(|c| c.replace(0))
}

/// A buffer shared with its producer becomes a resource binary (no copy); an owned one is
/// copied into a new binary.
fn bytes<'a>(env: Env<'a>, b: &Bytes) -> Term<'a> {
    match b {
        Bytes::Shared(shared) => {
            note_large(shared.as_slice().len());
            shared_binary::make(env, shared)
        }
        Bytes::Owned(v) => binary(env, v),
    }
}

fn note_large(len: usize) {
    if len >= LARGE_BINARY {
        LARGE_BYTES.with(|c| c.set(c.get() + len));
    }
}

pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    note_large(bytes.len());
    let mut bin = NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    bin.into()
}

/// Only atoms that already exist: Python text never creates an atom.
fn existing_atom<'a>(env: Env<'a>, name: &str) -> Option<Term<'a>> {
    if let Ok(atom) = Atom::existing_from_utf8_bytes(env, name.as_bytes()) {
        return Some(atom.encode(env));
    }
    // Names with characters beyond Latin-1 (OTP 25's NIF API limit): the safe decoder also
    // refuses to create atoms.
    let len = u16::try_from(name.len()).ok()?;
    let mut etf = Vec::with_capacity(name.len() + 4);
    etf.push(131);
    etf.push(118);
    etf.extend_from_slice(&len.to_be_bytes());
    etf.extend_from_slice(name.as_bytes());
    env.binary_to_term(&etf).map(|(t, _)| t)
}

/// Pids, refs and big integers travel in the external term format. The bytes came from
/// `term_to_binary` (or `bigint_to_etf`), so decoding cannot fail short of a bug.
fn from_etf<'a>(env: Env<'a>, etf: &[u8]) -> Term<'a> {
    env.binary_to_term(etf)
        .map(|(t, _)| t)
        .unwrap_or_else(|| atoms::undefined().encode(env))
}
