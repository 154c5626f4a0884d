//! Python calling into Erlang, the BEAM half: messages to the `py_callbacks` dispatcher,
//! `erlang.send`, and the NIF that carries an Erlang function's answer back.
//!
//! Python runs only on threads the emulator does not manage, so everything here that
//! sends does so with a NULL env (each thread reuses its own message env).

use std::cell::RefCell;

use rustler::sys::{enif_whereis_pid, ErlNifPid};
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

use pybeam_core::callbacks::{self, Beam, IdleWorkers, SendError};
use pybeam_core::Value;

use crate::atoms;
use crate::decode::{DecodeError, Decoder, NORMAL_BUDGET};
use crate::encode;

thread_local! {
    static MSG_ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

pub struct NifBeam;

/// Worker processes of `py_callbacks` waiting for their next call.
static IDLE: IdleWorkers<LocalPid> = IdleWorkers::new();

fn dispatcher(env: Env<'_>) -> Option<LocalPid> {
    let name = atoms::py_callbacks().encode(env);
    let mut pid = std::mem::MaybeUninit::<ErlNifPid>::uninit();
    // SAFETY: called from a thread the emulator does not manage, where a NULL env is what
    // enif_whereis_pid expects; `pid` is an out-pointer, read only when the call succeeded.
    unsafe {
        if enif_whereis_pid(std::ptr::null_mut(), name.as_c_arg(), pid.as_mut_ptr()) == 0 {
            return None;
        }
        Some(LocalPid::from_c_arg(pid.assume_init()))
    }
}

/// `{'$py_call', Token, Name, Args, TimeoutMs}`, as workers and the dispatcher expect it.
fn call_message<'a>(env: Env<'a>, token: u64, name: &str, args: &[Value], timeout_ms: u64) -> Term<'a> {
    let args: Vec<Term> = args.iter().map(|a| encode::value(env, a)).collect();
    (atoms::py_call(), token, encode::binary(env, name.as_bytes()), args, timeout_ms).encode(env)
}

impl Beam for NifBeam {
    fn dispatch(&self, token: u64, name: &str, args: Vec<Value>, timeout_ms: u64) -> Result<(), String> {
        MSG_ENV.with(|cell| {
            let mut env = cell.borrow_mut();
            // An idle worker that is gone (killed while idle) refuses the send; try the next.
            while let Some(worker) = IDLE.pop() {
                if env.send_and_clear(&worker, |env| call_message(env, token, name, &args, timeout_ms)).is_ok() {
                    return Ok(());
                }
            }
            let to = env
                .run(dispatcher)
                .ok_or_else(|| "the pybeam application is not running (no py_callbacks)".to_owned())?;
            env.send_and_clear(&to, |env| call_message(env, token, name, &args, timeout_ms))
                .map_err(|_| "the py_callbacks process is gone".to_owned())
        })
    }

    fn send(&self, pid: &[u8], msg: &Value) -> Result<(), SendError> {
        MSG_ENV.with(|cell| {
            let mut env = cell.borrow_mut();
            let to = env
                .run(|env| env.binary_to_term(pid).and_then(|(t, _)| t.decode::<LocalPid>().ok()))
                .ok_or(SendError::NotLocal)?;
            env.clear();
            env.send_and_clear(&to, |env| encode::value(env, msg)).map_err(|_| SendError::NotAlive)
        })
    }
}

/// `callback_reply(Token, {ok, Value} | {error, Reason})`: the answer of the Erlang function
/// that call `Token` ran. `ok`, `stale` when nobody waits any more (the call timed out),
/// `dirty` when the answer is too big to decode here, or `{error, {unsupported_term, T}}`
/// when it has no Python form.
#[rustler::nif]
fn callback_reply<'a>(env: Env<'a>, token: u64, reply: Term<'a>) -> Term<'a> {
    reply_with_budget(env, token, reply, Some(NORMAL_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn callback_reply_dirty<'a>(env: Env<'a>, token: u64, reply: Term<'a>) -> Term<'a> {
    reply_with_budget(env, token, reply, None)
}

fn reply_with_budget<'a>(env: Env<'a>, token: u64, reply: Term<'a>, budget: Option<usize>) -> Term<'a> {
    let parts = rustler::types::tuple::get_tuple(reply).unwrap_or_default();
    let (ok, value) = match parts.as_slice() {
        [tag, v] if atoms::ok() == *tag => (true, *v),
        [tag, v] if atoms::error() == *tag => (false, *v),
        _ => return (atoms::badarg(), "reply must be {ok, Value} or {error, Reason}").encode(env),
    };
    match Decoder::new(budget).value(value) {
        Ok(v) => match callbacks::complete(token, if ok { Ok(v) } else { Err(v) }) {
            true => atoms::ok().encode(env),
            false => atoms::stale().encode(env),
        },
        Err(DecodeError::NeedsDirty) => atoms::dirty().encode(env),
        Err(DecodeError::Unsupported(t)) => (atoms::error(), (atoms::unsupported_term(), t)).encode(env),
        Err(DecodeError::TooDeep) => (atoms::error(), (atoms::too_deep(), pybeam_core::MAX_DEPTH)).encode(env),
        Err(DecodeError::BadArg(why)) => (atoms::badarg(), why).encode(env),
    }
}

/// `register_name(Name, Registered)`: keeps the set of registered names that
/// `from erlang import name` checks.
#[rustler::nif]
fn register_name(name: String, registered: bool) -> rustler::Atom {
    callbacks::set_registered(&name, registered);
    atoms::ok()
}

/// `callback_expire(Token)`: answers call `Token` with `{error, timeout}` if it is still
/// waiting. True if it was (the worker running it may then be killed).
#[rustler::nif]
fn callback_expire(token: u64) -> bool {
    callbacks::expire(token)
}

/// `callback_worker_idle(Pid)`: worker `Pid` waits for its next call. Returns its ticket
/// for `callback_worker_next/1`.
#[rustler::nif]
fn callback_worker_idle(worker: LocalPid) -> u64 {
    IDLE.push(worker)
}

/// `callback_worker_next(Ticket)`: whether the worker that got `Ticket` is still the one
/// the next call goes to.
#[rustler::nif]
fn callback_worker_next(ticket: u64) -> bool {
    IDLE.is_next(ticket)
}

/// `callback_worker_retire(Pid)`: worker `Pid` stops waiting. True if no call can reach it
/// any more; false if one is already on its way, which it must then run.
#[rustler::nif]
fn callback_worker_retire(worker: LocalPid) -> bool {
    IDLE.retire(&worker)
}
