//! Loops as NIF resources: creation, request submission, cancellation, teardown.
//!
//! Results leave the loop thread as one message per batch to the loop's event process:
//! `{'$py_replies', [{Alias, Result}]}`. The event process forwards each `{Alias, Result}` to
//! the alias, so a caller that timed out (alias deactivated) never receives a late result.
//! A batch that carries large binaries is tagged `'$py_replies_collect'`: the event process
//! garbage-collects after routing it, or it would keep those binaries alive while idle.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustler::sys::{enif_make_copy, ErlNifTerm};
use rustler::{Encoder, Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc, Term};

use pybeam_core::{Completion, Host, Loop, LoopConfig, Request, SubmitError};

use crate::atoms;
use crate::decode::{DecodeError, Decoder, NORMAL_BUDGET};
use crate::encode;
use crate::kept_env::KeptEnv;

/// Routes one result: the caller's alias, kept alive in the request's env.
pub struct ReplyTo {
    // Owns the env that `alias` (and any shared binaries) live in.
    _keep: Arc<KeptEnv>,
    alias: ErlNifTerm,
}

// SAFETY: `alias` lives in `keep`, which is Send + Sync; it is only copied out of.
unsafe impl Send for ReplyTo {}

pub struct NifHost {
    event_proc: LocalPid,
    msg_env: Mutex<OwnedEnv>,
}

impl Host for NifHost {
    type Reply = ReplyTo;

    fn deliver(&self, done: &mut Vec<Completion<ReplyTo>>) {
        let mut env = self.msg_env.lock();
        // A send fails only if the event process is gone; its callers were told by their
        // monitors, so the results are simply dropped.
        let _ = env.send_and_clear(&self.event_proc, |env| {
            encode::take_large_bytes();
            let replies: Vec<Term> = done
                .drain(..)
                .map(|c| {
                    // SAFETY: the alias lives in c.reply._keep, alive for this call.
                    let alias = unsafe { Term::new(env, enif_make_copy(env.as_c_arg(), c.reply.alias)) };
                    make_pair(env, alias, encode::outcome(env, &c.outcome))
                })
                .collect();
            let tag = if encode::take_large_bytes() > 0 {
                atoms::py_replies_collect()
            } else {
                atoms::py_replies()
            };
            (tag, replies).encode(env)
        });
    }

    fn exited(&self, crash: Option<String>) {
        let mut env = self.msg_env.lock();
        let _ = env.send_and_clear(&self.event_proc, |env| {
            let why = match &crash {
                None => atoms::normal().encode(env),
                Some(msg) => (atoms::crash(), encode::binary(env, msg.as_bytes())).encode(env),
            };
            (atoms::py_loop_exit(), why).encode(env)
        });
    }
}

fn make_pair<'a>(env: Env<'a>, a: Term<'a>, b: Term<'a>) -> Term<'a> {
    rustler::types::tuple::make_tuple(env, &[a, b])
}

pub struct LoopResource {
    pub lp: Arc<Loop<NifHost>>,
}

#[rustler::resource_impl]
impl Resource for LoopResource {
    const IMPLEMENTS_DOWN: bool = true;

    /// The event process died: its loop goes with it.
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.lp.close();
    }
}

impl Drop for LoopResource {
    fn drop(&mut self) {
        // Nobody can reach the loop any more; let its thread finish.
        self.lp.close();
    }
}

fn opt_u64(opts: Term<'_>, key: &str, default: u64) -> u64 {
    let env = opts.get_env();
    rustler::Atom::from_str(env, key)
        .ok()
        .and_then(|k| opts.map_get(k).ok())
        .and_then(|v| v.decode::<u64>().ok())
        .unwrap_or(default)
}

/// `loop_new(EventProc, Opts) -> {ok, Loop} | {error, Reason}`.
/// Opts: `max_batch`, `capacity`, `spin_us`, `index` (for the thread name).
#[rustler::nif]
fn loop_new<'a>(env: Env<'a>, event_proc: LocalPid, opts: Term<'a>) -> Term<'a> {
    if !opts.is_map() {
        return (atoms::error(), (atoms::badarg(), "options must be a map")).encode(env);
    }
    let defaults = LoopConfig::default();
    let config = LoopConfig {
        name: format!("pybeam-loop-{}", opt_u64(opts, "index", 0)),
        max_batch: opt_u64(opts, "max_batch", defaults.max_batch as u64).clamp(1, 1 << 16) as usize,
        capacity: opt_u64(opts, "capacity", defaults.capacity as u64).clamp(1, 1 << 24) as usize,
        spin: Duration::from_micros(opt_u64(opts, "spin_us", defaults.spin.as_micros() as u64).min(10_000)),
    };
    let host = NifHost { event_proc, msg_env: Mutex::new(OwnedEnv::new()) };
    let lp = match Loop::start(config, host) {
        Ok(lp) => lp,
        Err(e) => return (atoms::error(), encode::binary(env, e.to_string().as_bytes())).encode(env),
    };
    let resource = ResourceArc::new(LoopResource { lp: lp.clone() });
    if env.monitor(&resource, &event_proc).is_none() {
        lp.close();
        return (atoms::error(), atoms::loop_destroyed()).encode(env);
    }
    (atoms::ok(), resource).encode(env)
}

/// `submit(Loop, Id, Alias, Job)`: decodes on this scheduler within a budget; answers `dirty`
/// when the request is too big, and the caller retries with `submit_dirty/4`.
#[rustler::nif]
fn submit<'a>(env: Env<'a>, lp: ResourceArc<LoopResource>, id: u64, alias: Term<'a>, job: Term<'a>) -> Term<'a> {
    submit_with_budget(env, &lp, id, alias, job, Some(NORMAL_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn submit_dirty<'a>(
    env: Env<'a>,
    lp: ResourceArc<LoopResource>,
    id: u64,
    alias: Term<'a>,
    job: Term<'a>,
) -> Term<'a> {
    submit_with_budget(env, &lp, id, alias, job, None)
}

fn submit_with_budget<'a>(
    env: Env<'a>,
    lp: &LoopResource,
    id: u64,
    alias: Term<'a>,
    job: Term<'a>,
    budget: Option<usize>,
) -> Term<'a> {
    if lp.lp.is_closed() {
        return (atoms::error(), atoms::loop_destroyed()).encode(env);
    }
    let keep = Arc::new(KeptEnv::new());
    let job = match Decoder::new(&keep, budget).job(job) {
        Ok(job) => job,
        Err(DecodeError::NeedsDirty) => return atoms::dirty().encode(env),
        Err(DecodeError::Unsupported(t)) => {
            return (atoms::error(), (atoms::unsupported_term(), t)).encode(env)
        }
        Err(DecodeError::TooDeep) => {
            return (atoms::error(), (atoms::too_deep(), pybeam_core::MAX_DEPTH)).encode(env)
        }
        Err(DecodeError::BadArg(why)) => return (atoms::badarg(), why).encode(env),
    };
    let alias = keep.keep(alias);
    let req = Request { id, reply: ReplyTo { _keep: keep, alias }, job };
    match lp.lp.submit(req) {
        Ok(()) => atoms::ok().encode(env),
        Err(SubmitError::Overloaded(_)) => (atoms::error(), atoms::overloaded()).encode(env),
        Err(SubmitError::Closed(_)) => (atoms::error(), atoms::loop_destroyed()).encode(env),
    }
}

/// The caller of `Id` timed out: skip the request if queued, interrupt it if running.
#[rustler::nif]
fn cancel(lp: ResourceArc<LoopResource>, id: u64) -> rustler::Atom {
    lp.lp.cancel(id);
    atoms::ok()
}

/// Stops the loop thread after its current batch; queued requests get `loop_destroyed`.
#[rustler::nif]
fn loop_close(lp: ResourceArc<LoopResource>) -> rustler::Atom {
    lp.lp.close();
    atoms::ok()
}

#[rustler::nif]
fn loop_stats<'a>(env: Env<'a>, lp: ResourceArc<LoopResource>) -> Term<'a> {
    let s = lp.lp.stats();
    let keys = [
        atoms::queued().encode(env),
        atoms::running().encode(env),
        atoms::completed().encode(env),
        atoms::batches().encode(env),
        atoms::skipped().encode(env),
        atoms::closed().encode(env),
    ];
    let values = [
        s.queued.encode(env),
        s.running.encode(env),
        s.completed.encode(env),
        s.batches.encode(env),
        s.skipped.encode(env),
        s.closed.encode(env),
    ];
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| atoms::error().encode(env))
}
