//! Async jobs on a loop thread's asyncio loop: results, gathers, the task gate,
//! cancellation and streams with credit.
mod common;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pybeam_core::aio::link::Command;
use pybeam_core::jobs::CallError;
use pybeam_core::{CallTarget, Completion, Host, Job, Loop, LoopConfig, Outcome, Request, ResultKind, Value};

type Got = (u64, ResultKind, Outcome);

struct ChannelHost(Mutex<Sender<Got>>);

impl Host for ChannelHost {
    type Reply = ();
    fn event_reply(&self) {}
    fn deliver(&self, done: &mut Vec<Completion<()>>) {
        let tx = self.0.lock().unwrap();
        for c in done.drain(..) {
            let _ = tx.send((c.id, c.kind, c.outcome));
        }
    }
    fn send_commands(&self, commands: &mut Vec<Command>) {
        commands.clear();
    }
    fn exited(&self, _crash: Option<String>) {}
}

/// Python helpers for these tests, as module `tasks_helpers`.
const HELPERS: &str = r#"
import asyncio, sys, types
# One interpreter serves every test of this binary, in parallel: the module is made once,
# and each test logs under its own tags.
m = sys.modules.get('tasks_helpers') or types.ModuleType('tasks_helpers')
exec('' if 'tasks_helpers' in sys.modules else '''
import asyncio
log = []
async def double(x, delay=0.0):
    await asyncio.sleep(delay)
    return 2 * x
def plain(x):
    return x + 1
def awaitable(x):
    return asyncio.sleep(0, x)
async def fail():
    raise KeyError('nope')
async def forever(tag):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        log.append(tag)
        raise
async def agen(n, tag='agen'):
    try:
        for i in range(n):
            yield i
    finally:
        log.append(tag)
def gen(n):
    yield from range(n)
def unconvertible():
    yield 1
    yield object()
''', m.__dict__)
sys.modules['tasks_helpers'] = m
"#;

fn start(config: LoopConfig) -> (Arc<Loop<ChannelHost>>, Receiver<Got>) {
    common::python();
    let (tx, rx) = channel();
    let lp = Loop::start(config, ChannelHost(Mutex::new(tx))).unwrap();
    lp.submit(Request { id: 1, reply: (), job: Job::Exec { code: HELPERS.as_bytes().to_vec() } }).ok().unwrap();
    assert_eq!(next(&rx), (1, ResultKind::Call, Ok(Value::None)));
    (lp, rx)
}

fn next(rx: &Receiver<Got>) -> Got {
    rx.recv_timeout(Duration::from_secs(10)).expect("a completion within 10 s")
}

fn target(function: &str, args: Vec<Value>) -> CallTarget {
    CallTarget { module: "tasks_helpers".into(), function: function.into(), args, kwargs: vec![] }
}

fn submit(lp: &Loop<ChannelHost>, id: u64, job: Job) {
    lp.submit(Request { id, reply: (), job }).ok().unwrap();
}

fn eval(lp: &Loop<ChannelHost>, rx: &Receiver<Got>, id: u64, code: &str) -> Outcome {
    submit(lp, id, Job::Eval { code: code.as_bytes().to_vec(), locals: vec![] });
    let (got_id, _, outcome) = next(rx);
    assert_eq!(got_id, id);
    outcome
}

#[test]
fn coroutines_plain_functions_and_awaitables_give_their_results() {
    let (lp, rx) = start(LoopConfig::default());
    submit(&lp, 10, Job::Async(target("double", vec![Value::Int(21)])));
    submit(&lp, 11, Job::Async(target("plain", vec![Value::Int(1)])));
    submit(&lp, 12, Job::Async(target("awaitable", vec![Value::Int(7)])));
    let mut got = vec![next(&rx), next(&rx), next(&rx)];
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        vec![
            (10, ResultKind::Async, Ok(Value::Int(42))),
            (11, ResultKind::Async, Ok(Value::Int(2))),
            (12, ResultKind::Async, Ok(Value::Int(7))),
        ]
    );
    submit(&lp, 13, Job::Async(target("fail", vec![])));
    match next(&rx) {
        (13, ResultKind::Async, Err(CallError::Python(e))) => assert_eq!(e.type_name, "KeyError"),
        other => panic!("{other:?}"),
    }
    lp.close();
}

#[test]
fn a_gather_answers_once_in_input_order_or_names_its_failures() {
    let (lp, rx) = start(LoopConfig::default());
    // Later items finish first: the answer is still in input order.
    let items = (0..5).map(|i| target("double", vec![Value::Int(i), Value::Float(0.05 - 0.01 * i as f64)])).collect();
    submit(&lp, 20, Job::Gather(items));
    assert_eq!(
        next(&rx),
        (20, ResultKind::Async, Ok(Value::List((0..5).map(|i| Value::Int(2 * i)).collect())))
    );
    submit(&lp, 21, Job::Gather(vec![target("plain", vec![Value::Int(1)]), target("fail", vec![]), target("nope", vec![])]));
    match next(&rx) {
        (21, ResultKind::Async, Err(CallError::GatherFailed(failures))) => {
            let named: Vec<(usize, String)> = failures
                .into_iter()
                .map(|(i, e)| match e {
                    CallError::Python(p) => (i, p.type_name),
                    other => (i, format!("{other:?}")),
                })
                .collect();
            assert_eq!(named, vec![(2, "KeyError".into()), (3, "AttributeError".into())]);
        }
        other => panic!("{other:?}"),
    }
    submit(&lp, 22, Job::Gather(vec![]));
    assert_eq!(next(&rx), (22, ResultKind::Async, Ok(Value::List(vec![]))));
    lp.close();
}

#[test]
fn at_most_max_tasks_run_at_once() {
    let (lp, rx) = start(LoopConfig { max_tasks: 2, ..LoopConfig::default() });
    let t0 = Instant::now();
    let items = (0..6).map(|i| target("double", vec![Value::Int(i), Value::Float(0.1)])).collect();
    submit(&lp, 30, Job::Gather(items));
    common::wait_for("two tasks running, four waiting", || {
        let stats = lp.stats();
        (stats.tasks, stats.tasks_waiting) == (2, 4)
    });
    assert_eq!(next(&rx).2, Ok(Value::List((0..6).map(|i| Value::Int(2 * i)).collect())));
    // Three rounds of two.
    assert!(t0.elapsed() >= Duration::from_millis(300), "{:?}", t0.elapsed());
    let stats = lp.stats();
    assert_eq!((stats.tasks, stats.tasks_waiting), (0, 0));
    lp.close();
}

#[test]
fn a_cancelled_job_cancels_its_tasks_and_answers_nothing() {
    let (lp, rx) = start(LoopConfig { max_tasks: 1, ..LoopConfig::default() });
    submit(&lp, 40, Job::Gather(vec![target("forever", vec![Value::binary("a")]), target("forever", vec![Value::binary("b")])]));
    common::wait_for("one task running, one waiting", || (lp.stats().tasks, lp.stats().tasks_waiting) == (1, 1));
    lp.cancel(40);
    // The running task saw CancelledError; the waiting item never started.
    let logged = |tag: &str| eval(&lp, &rx, 41, &format!("'{tag}' in __import__('tasks_helpers').log"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while logged("a") != Ok(Value::Bool(true)) {
        assert!(Instant::now() < deadline, "task not cancelled");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(logged("b"), Ok(Value::Bool(false)));
    assert_eq!((lp.stats().tasks, lp.stats().tasks_waiting), (0, 0));
    // Nothing was answered for the cancelled job.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    lp.close();
}

#[test]
fn a_stream_sends_what_its_credit_allows_then_ends() {
    let (lp, rx) = start(LoopConfig::default());
    submit(&lp, 50, Job::Stream { target: target("agen", vec![Value::Int(5)]), window: 2 });
    assert_eq!(next(&rx), (50, ResultKind::StreamData, Ok(Value::Int(0))));
    assert_eq!(next(&rx), (50, ResultKind::StreamData, Ok(Value::Int(1))));
    // No more credit: nothing more comes.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    lp.grant(50, 10);
    for i in 2..5 {
        assert_eq!(next(&rx), (50, ResultKind::StreamData, Ok(Value::Int(i))));
    }
    assert_eq!(next(&rx), (50, ResultKind::StreamEnd, Ok(Value::None)));
    submit(&lp, 51, Job::Stream { target: target("gen", vec![Value::Int(2)]), window: 8 });
    assert_eq!(next(&rx), (51, ResultKind::StreamData, Ok(Value::Int(0))));
    assert_eq!(next(&rx), (51, ResultKind::StreamData, Ok(Value::Int(1))));
    assert_eq!(next(&rx), (51, ResultKind::StreamEnd, Ok(Value::None)));
    // An item with no Erlang form ends the stream with that error.
    submit(&lp, 52, Job::Stream { target: target("unconvertible", vec![]), window: 8 });
    assert_eq!(next(&rx), (52, ResultKind::StreamData, Ok(Value::Int(1))));
    assert_eq!(next(&rx), (52, ResultKind::StreamEnd, Err(CallError::UnsupportedType("object".into()))));
    lp.close();
}

#[test]
fn a_cancelled_stream_closes_its_generator() {
    let (lp, rx) = start(LoopConfig::default());
    let t = CallTarget { kwargs: vec![("tag".into(), Value::binary("stream 60"))], ..target("agen", vec![Value::Int(100)]) };
    submit(&lp, 60, Job::Stream { target: t, window: 1 });
    assert_eq!(next(&rx), (60, ResultKind::StreamData, Ok(Value::Int(0))));
    lp.cancel(60);
    let deadline = Instant::now() + Duration::from_secs(5);
    while eval(&lp, &rx, 61, "'stream 60' in __import__('tasks_helpers').log") != Ok(Value::Bool(true)) {
        assert!(Instant::now() < deadline, "generator not closed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(lp.stats().tasks, 0);
    lp.close();
}

#[test]
fn closing_the_loop_answers_pending_async_jobs() {
    let (lp, rx) = start(LoopConfig::default());
    submit(&lp, 70, Job::Async(target("forever", vec![Value::binary("c")])));
    std::thread::sleep(Duration::from_millis(50));
    lp.close();
    assert_eq!(next(&rx), (70, ResultKind::Async, Err(CallError::Closed)));
}
