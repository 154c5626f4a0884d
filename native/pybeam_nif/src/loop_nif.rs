//! Loops as NIF resources: creation, request submission, cancellation, teardown.
//!
//! Results leave the loop thread as one message per batch to the loop's event process:
//! `{'$py_results', [{Alias, Result}], [Event], [StreamItem]}`. The event process forwards
//! each `{Alias, Result}` to the alias, so a caller that timed out (alias deactivated)
//! never receives a late result; results addressed to the event queue arrive as finished
//! events (`{Id, call_result | call_error | async_result | async_error, Term}`) and are
//! appended as they are; stream items (`{Id, {data, Term}}`, `{Id, done}`,
//! `{Id, {error, Reason}}`) go to the stream's consumer.
//! A batch that carries large binaries is tagged `'$py_results_collect'`: the event process
//! garbage-collects after routing it, or it would keep those binaries alive while idle.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustler::sys::{enif_make_copy, ErlNifTerm};
use rustler::types::tuple::make_tuple;
use rustler::{Encoder, Env, LocalPid, Monitor, OwnedEnv, Resource, ResourceArc, Term};

use pybeam_core::aio::link::{Command, Delivered, Dir};
use pybeam_core::{Completion, Host, Job, Loop, LoopConfig, Request, ResultKind, SubmitError};

use crate::atoms;
use crate::decode::{self, DecodeError, Decoder, NORMAL_BUDGET};
use crate::encode;
use crate::kept_env::KeptEnv;

/// Where one result goes.
pub enum ReplyTo {
    /// A caller's alias, kept alive in the request's own env.
    Alias { keep: KeptEnv, alias: ErlNifTerm },
    /// The loop's event queue, as an event named by the request's id.
    Event,
}

// SAFETY: `alias` lives in `keep`, which is Send + Sync; it is only copied out of.
unsafe impl Send for ReplyTo {}

impl ReplyTo {
    /// `event` for the event queue, else a caller's alias.
    fn new(target: Term<'_>) -> ReplyTo {
        if atoms::event() == target {
            return ReplyTo::Event;
        }
        let keep = KeptEnv::new();
        let alias = keep.keep(target);
        ReplyTo::Alias { keep, alias }
    }
}

pub struct NifHost {
    event_proc: LocalPid,
    msg_env: Mutex<OwnedEnv>,
}

impl Host for NifHost {
    type Reply = ReplyTo;

    fn event_reply(&self) -> ReplyTo {
        ReplyTo::Event
    }

    fn deliver(&self, done: &mut Vec<Completion<ReplyTo>>) {
        let mut env = self.msg_env.lock();
        // A send fails only if the event process is gone; its callers were told by their
        // monitors, so the results are simply dropped.
        let _ = env.send_and_clear(&self.event_proc, |env| {
            encode::take_large_bytes();
            let mut replies = Vec::new();
            let mut events = Vec::new();
            let mut streams = Vec::new();
            for c in done.drain(..) {
                match (c.reply, c.kind) {
                    (ReplyTo::Alias { keep, alias }, _) => {
                        // SAFETY: the alias lives in `keep`, alive until the end of this arm.
                        let alias = unsafe { Term::new(env, enif_make_copy(env.as_c_arg(), alias)) };
                        replies.push(make_tuple(env, &[alias, encode::outcome(env, &c.outcome)]));
                        drop(keep);
                    }
                    (ReplyTo::Event, ResultKind::Call) => {
                        events.push(result_event(env, c.id, &c.outcome, atoms::call_result(), atoms::call_error()))
                    }
                    (ReplyTo::Event, ResultKind::Async) => {
                        events.push(result_event(env, c.id, &c.outcome, atoms::async_result(), atoms::async_error()))
                    }
                    (ReplyTo::Event, ResultKind::StreamData) => streams.push(stream_item(env, c.id, &c.outcome, false)),
                    (ReplyTo::Event, ResultKind::StreamEnd) => streams.push(stream_item(env, c.id, &c.outcome, true)),
                }
            }
            let tag = if encode::take_large_bytes() > 0 {
                atoms::py_results_collect()
            } else {
                atoms::py_results()
            };
            make_tuple(env, &[tag.encode(env), replies.encode(env), events.encode(env), streams.encode(env)])
        });
    }

    fn send_commands(&self, commands: &mut Vec<Command>) {
        let mut env = self.msg_env.lock();
        let _ = env.send_and_clear(&self.event_proc, |env| {
            let cmds: Vec<Term> = commands.drain(..).map(|c| command_term(env, &c)).collect();
            (atoms::py_loop_cmds(), cmds).encode(env)
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

fn dir_atom(dir: Dir) -> rustler::Atom {
    match dir {
        Dir::Read => atoms::read(),
        Dir::Write => atoms::write(),
    }
}

/// `{watch | unwatch | rearm, Fd, read | write}`, `{wake_after, Microseconds}`, `wake_cancel`.
fn command_term<'a>(env: Env<'a>, c: &Command) -> Term<'a> {
    match c {
        Command::Watch(fd, d) => (atoms::watch(), *fd, dir_atom(*d)).encode(env),
        Command::Unwatch(fd, d) => (atoms::unwatch(), *fd, dir_atom(*d)).encode(env),
        Command::Rearm(fd, d) => (atoms::rearm(), *fd, dir_atom(*d)).encode(env),
        Command::WakeAt(Some(after)) => (atoms::wake_after(), after.as_micros() as u64).encode(env),
        Command::WakeAt(None) => atoms::wake_cancel().encode(env),
    }
}

/// `{Id, call_result, Value}` or `{Id, call_error, Reason}` (and the same for async).
fn result_event<'a>(env: Env<'a>, id: u64, outcome: &pybeam_core::Outcome, ok: rustler::Atom, err: rustler::Atom) -> Term<'a> {
    match outcome {
        Ok(v) => make_tuple(env, &[id.encode(env), ok.encode(env), encode::value(env, v)]),
        Err(e) => make_tuple(env, &[id.encode(env), err.encode(env), encode::call_error(env, e)]),
    }
}

/// `{Id, {data, Value}}`; at the end `{Id, done}` or `{Id, {error, Reason}}`.
fn stream_item<'a>(env: Env<'a>, id: u64, outcome: &pybeam_core::Outcome, end: bool) -> Term<'a> {
    let item = match (outcome, end) {
        (Ok(v), false) => (atoms::data(), encode::value(env, v)).encode(env),
        (Ok(_), true) => atoms::done().encode(env),
        (Err(e), _) => (atoms::error(), encode::call_error(env, e)).encode(env),
    };
    (id, item).encode(env)
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

fn opt_atom<'a>(opts: Term<'a>, key: &str) -> Option<Term<'a>> {
    rustler::Atom::from_str(opts.get_env(), key).ok().and_then(|k| opts.map_get(k).ok())
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
/// Opts: `max_batch`, `capacity`, `spin_us`, `max_tasks`, `index` (for the thread name).
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
        max_tasks: opt_u64(opts, "max_tasks", defaults.max_tasks as u64).clamp(1, 1 << 20) as usize,
    };
    let host = NifHost { event_proc, msg_env: Mutex::new(OwnedEnv::new()) };
    let threaded = opt_atom(opts, "thread").map(|t| atoms::false_() != t).unwrap_or(true);
    let lp = if threaded {
        match Loop::start(config, host) {
            Ok(lp) => lp,
            Err(e) => return (atoms::error(), encode::binary(env, e.to_string().as_bytes())).encode(env),
        }
    } else {
        Loop::threadless(config, host)
    };
    // A loop asked for by Python code: hand it to the thread that waits for it.
    if let Some(token) = opt_atom(opts, "token").and_then(|t| t.decode::<u64>().ok()) {
        if !crate::link_factory::complete(token, Ok(lp.clone())) {
            lp.close();
            return (atoms::error(), atoms::loop_destroyed()).encode(env);
        }
    }
    let resource = ResourceArc::new(LoopResource { lp: lp.clone() });
    if env.monitor(&resource, &event_proc).is_none() {
        lp.close();
        return (atoms::error(), atoms::loop_destroyed()).encode(env);
    }
    (atoms::ok(), resource).encode(env)
}

/// `submit(Loop, Id, ReplyTo, Job)`: `ReplyTo` is the caller's alias, or `event` for the
/// loop's event queue. Decodes on this scheduler within a budget; answers `dirty` when the
/// request is too big, and the caller retries with `submit_dirty/4`.
#[rustler::nif]
fn submit<'a>(env: Env<'a>, lp: ResourceArc<LoopResource>, id: u64, reply_to: Term<'a>, job: Term<'a>) -> Term<'a> {
    submit_with_budget(env, &lp, id, reply_to, job, Some(NORMAL_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn submit_dirty<'a>(
    env: Env<'a>,
    lp: ResourceArc<LoopResource>,
    id: u64,
    reply_to: Term<'a>,
    job: Term<'a>,
) -> Term<'a> {
    submit_with_budget(env, &lp, id, reply_to, job, None)
}

fn submit_with_budget<'a>(
    env: Env<'a>,
    lp: &LoopResource,
    id: u64,
    reply_to: Term<'a>,
    job: Term<'a>,
    budget: Option<usize>,
) -> Term<'a> {
    if lp.lp.is_closed() {
        return (atoms::error(), atoms::loop_destroyed()).encode(env);
    }
    let job = match Decoder::new(budget).job(job) {
        Ok(job) => job,
        Err(e) => return decode_error(env, e),
    };
    let reply = ReplyTo::new(reply_to);
    if let Err(why) = check_reply(&job, &reply) {
        return (atoms::badarg(), why).encode(env);
    }
    let req = Request { id, reply, job };
    match lp.lp.submit(req) {
        Ok(()) => atoms::ok().encode(env),
        Err(SubmitError::Overloaded(_)) => (atoms::error(), atoms::overloaded()).encode(env),
        Err(SubmitError::Closed(_)) => (atoms::error(), atoms::loop_destroyed()).encode(env),
    }
}

/// `deliver_events(Loop, Events)`: what the event process has for the loop, in one call;
/// wakes the loop's thread only if it is parked. Events: `{Fd, read | write}` (ready),
/// `{failed, Fd, read | write}` (could not be watched), `wakeup`.
#[rustler::nif]
fn deliver_events<'a>(env: Env<'a>, lp: ResourceArc<LoopResource>, events: Term<'a>) -> Term<'a> {
    let Some(items) = decode::proper_list(events) else {
        return (atoms::badarg(), "events must be a proper list").encode(env);
    };
    let mut out = Vec::new();
    for item in items {
        if atoms::wakeup() == item {
            out.push(Delivered::Wakeup);
            continue;
        }
        let parts = rustler::types::tuple::get_tuple(item).unwrap_or_default();
        let parsed = match parts.as_slice() {
            [fd, d] => fd.decode::<i32>().ok().zip(dir_of(*d)).map(|(fd, d)| Delivered::Ready(fd, d)),
            [tag, fd, d] if atoms::failed() == *tag => {
                fd.decode::<i32>().ok().zip(dir_of(*d)).map(|(fd, d)| Delivered::Failed(fd, d))
            }
            _ => None,
        };
        match parsed {
            Some(d) => out.push(d),
            None => return (atoms::badarg(), "unknown event").encode(env),
        }
    }
    lp.lp.deliver(out);
    atoms::ok().encode(env)
}

fn dir_of(t: Term<'_>) -> Option<Dir> {
    if atoms::read() == t {
        Some(Dir::Read)
    } else if atoms::write() == t {
        Some(Dir::Write)
    } else {
        None
    }
}

/// `link_failed(Token, Reason)`: the BEAM could not make the event process that Python code
/// asked for; the waiting `ErlangEventLoop()` raises `RuntimeError(Reason)`.
#[rustler::nif]
fn link_failed(token: u64, reason: String) -> rustler::Atom {
    crate::link_factory::complete(token, Err(reason));
    atoms::ok()
}

/// `submit_many(Loop, [{Id, ReplyTo, Job}])`: all requests in one NIF call, queued all
/// together or not at all (`{error, overloaded}`); `dirty` as for `submit/4`.
#[rustler::nif]
fn submit_many<'a>(env: Env<'a>, lp: ResourceArc<LoopResource>, requests: Term<'a>) -> Term<'a> {
    submit_many_with_budget(env, &lp, requests, Some(NORMAL_BUDGET))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn submit_many_dirty<'a>(env: Env<'a>, lp: ResourceArc<LoopResource>, requests: Term<'a>) -> Term<'a> {
    submit_many_with_budget(env, &lp, requests, None)
}

fn submit_many_with_budget<'a>(
    env: Env<'a>,
    lp: &LoopResource,
    requests: Term<'a>,
    budget: Option<usize>,
) -> Term<'a> {
    if lp.lp.is_closed() {
        return (atoms::error(), atoms::loop_destroyed()).encode(env);
    }
    let Some(items) = decode::proper_list(requests) else {
        return (atoms::badarg(), "requests must be a proper list").encode(env);
    };
    // One budget for the whole batch: a big batch goes to a dirty scheduler as a whole.
    let mut left = budget;
    let mut reqs = Vec::new();
    for item in items {
        let parts = match rustler::types::tuple::get_tuple(item) {
            Ok(parts) if parts.len() == 3 => parts,
            _ => return (atoms::badarg(), "each request must be {Id, ReplyTo, Job}").encode(env),
        };
        let (id, reply_to, job) = (parts[0], parts[1], parts[2]);
        let Ok(id) = id.decode::<u64>() else {
            return (atoms::badarg(), "a callback id must be a positive integer").encode(env);
        };
        let mut decoder = Decoder::new(left);
        let job = match decoder.job(job) {
            Ok(job) => job,
            Err(e) => return decode_error(env, e),
        };
        left = decoder.budget_left();
        let reply = ReplyTo::new(reply_to);
        if let Err(why) = check_reply(&job, &reply) {
            return (atoms::badarg(), why).encode(env);
        }
        reqs.push(Request { id, reply, job });
    }
    match lp.lp.submit_many(reqs) {
        Ok(()) => atoms::ok().encode(env),
        Err(SubmitError::Overloaded(_)) => (atoms::error(), atoms::overloaded()).encode(env),
        Err(SubmitError::Closed(_)) => (atoms::error(), atoms::loop_destroyed()).encode(env),
    }
}

/// A stream's items go to its event process, which knows the consumer.
fn check_reply(job: &Job, reply: &ReplyTo) -> Result<(), &'static str> {
    match (job, reply) {
        (Job::Stream { .. }, ReplyTo::Alias { .. }) => Err("a stream must reply to event"),
        _ => Ok(()),
    }
}

/// `stream_credit(Loop, Id, N)`: stream `Id` may send `N` more items.
#[rustler::nif]
fn stream_credit(lp: ResourceArc<LoopResource>, id: u64, n: usize) -> rustler::Atom {
    lp.lp.grant(id, n.min(1 << 20));
    atoms::ok()
}

fn decode_error<'a>(env: Env<'a>, e: DecodeError<'a>) -> Term<'a> {
    match e {
        DecodeError::NeedsDirty => atoms::dirty().encode(env),
        DecodeError::Unsupported(t) => (atoms::error(), (atoms::unsupported_term(), t)).encode(env),
        DecodeError::TooDeep => (atoms::error(), (atoms::too_deep(), pybeam_core::MAX_DEPTH)).encode(env),
        DecodeError::BadArg(why) => (atoms::badarg(), why).encode(env),
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
        atoms::tasks().encode(env),
        atoms::tasks_waiting().encode(env),
    ];
    let values = [
        s.queued.encode(env),
        s.running.encode(env),
        s.completed.encode(env),
        s.batches.encode(env),
        s.skipped.encode(env),
        s.closed.encode(env),
        s.tasks.encode(env),
        s.tasks_waiting.encode(env),
    ];
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or_else(|_| atoms::error().encode(env))
}
