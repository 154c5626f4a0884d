//! The loop thread: batching, overload, cancellation, interruption, shutdown.
mod common;

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pybeam_core::aio::link::Command;
use pybeam_core::jobs::CallError;
use pybeam_core::{CallTarget, Completion, Host, Job, Loop, LoopConfig, Request, SubmitError, Value};

enum Event {
    Batch(Vec<(u64, Result<Value, CallError>)>),
    Exited(Option<String>),
}

struct ChannelHost(Mutex<Sender<Event>>);

impl Host for ChannelHost {
    type Reply = ();
    fn event_reply(&self) {}
    fn deliver(&self, done: &mut Vec<Completion<()>>) {
        let batch = done.drain(..).map(|c| (c.id, c.outcome)).collect();
        let _ = self.0.lock().unwrap().send(Event::Batch(batch));
    }
    fn send_commands(&self, commands: &mut Vec<Command>) {
        // No event process here: the loops in these tests watch no fds and set no timers.
        commands.clear();
    }
    fn exited(&self, crash: Option<String>) {
        let _ = self.0.lock().unwrap().send(Event::Exited(crash));
    }
}

fn start(config: LoopConfig) -> (std::sync::Arc<Loop<ChannelHost>>, Receiver<Event>) {
    common::python();
    let (tx, rx) = channel();
    (Loop::start(config, ChannelHost(Mutex::new(tx))).unwrap(), rx)
}

fn call(id: u64, module: &str, function: &str, args: Vec<Value>) -> Request<()> {
    Request { id, reply: (), job: Job::Call(target(module, function, args)) }
}

fn target(module: &str, function: &str, args: Vec<Value>) -> CallTarget {
    CallTarget { module: module.into(), function: function.into(), args, kwargs: vec![] }
}

fn exec(id: u64, code: &str) -> Request<()> {
    Request { id, reply: (), job: Job::Exec { code: code.as_bytes().to_vec() } }
}

/// Collects completions until `n` have arrived.
fn collect(rx: &Receiver<Event>, n: usize) -> (Vec<(u64, Result<Value, CallError>)>, Vec<usize>) {
    let mut got = vec![];
    let mut sizes = vec![];
    while got.len() < n {
        match rx.recv_timeout(Duration::from_secs(10)).expect("completion within 10 s") {
            Event::Batch(b) => {
                sizes.push(b.len());
                got.extend(b);
            }
            Event::Exited(why) => panic!("loop exited early: {why:?}"),
        }
    }
    (got, sizes)
}

#[test]
fn every_request_completes_once_in_batches_of_at_most_max_batch() {
    let (lp, rx) = start(LoopConfig { max_batch: 16, ..LoopConfig::default() });
    // Block the thread so that requests pile up and must be batched.
    lp.submit(exec(1, "import time; time.sleep(0.2)")).ok().unwrap();
    for id in 2..=1001 {
        lp.submit(call(id, "operator", "neg", vec![Value::Int(id as i64)])).ok().unwrap();
    }
    let (got, sizes) = collect(&rx, 1001);
    assert!(sizes.iter().all(|&s| s <= 16), "{sizes:?}");
    assert!(sizes.iter().any(|&s| s == 16), "requests were batched: {sizes:?}");
    let mut ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=1001).collect::<Vec<_>>());
    for (id, outcome) in got.into_iter().filter(|(id, _)| *id > 1) {
        assert_eq!(outcome, Ok(Value::Int(-(id as i64))));
    }
    lp.close();
}

#[test]
fn a_full_queue_answers_overloaded() {
    let (lp, rx) = start(LoopConfig { capacity: 4, ..LoopConfig::default() });
    lp.submit(exec(1, "import time; time.sleep(0.3)")).ok().unwrap();
    common::wait_for("the sleep to run, the queue empty", || lp.stats().running == 1 && lp.stats().queued == 0);
    for id in 2..=5 {
        assert!(lp.submit(exec(id, "pass")).is_ok());
    }
    assert!(matches!(lp.submit(exec(6, "pass")), Err(SubmitError::Overloaded(r)) if r.id == 6));
    let (got, _) = collect(&rx, 5);
    assert_eq!(got.len(), 5);
    lp.close();
}

#[test]
fn a_cancelled_queued_request_is_skipped() {
    let (lp, rx) = start(LoopConfig::default());
    lp.submit(exec(1, "import time; time.sleep(0.2)")).ok().unwrap();
    lp.submit(exec(2, "raise RuntimeError('must not run')")).ok().unwrap();
    lp.submit(exec(3, "pass")).ok().unwrap();
    lp.cancel(2);
    let (got, _) = collect(&rx, 2);
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(lp.stats().skipped, 1);
    lp.close();
}

#[test]
fn a_cancelled_running_request_is_interrupted_and_the_loop_goes_on() {
    let (lp, rx) = start(LoopConfig::default());
    lp.submit(exec(7, "while True: pass")).ok().unwrap();
    common::wait_for("the request to start", || lp.stats().running == 1);
    let t0 = Instant::now();
    lp.cancel(7);
    lp.submit(call(8, "math", "sqrt", vec![Value::Float(9.0)])).ok().unwrap();
    let (got, _) = collect(&rx, 1);
    // The interrupted request produces nothing; the next one runs normally.
    assert_eq!(got, vec![(8, Ok(Value::Float(3.0)))]);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // No stale async exception hits later work.
    lp.submit(exec(9, "x = sum(range(100000))")).ok().unwrap();
    assert_eq!(collect(&rx, 1).0, vec![(9, Ok(Value::None))]);
    lp.close();
}

#[test]
fn close_answers_queued_requests_and_reports_exit() {
    let (lp, rx) = start(LoopConfig::default());
    lp.submit(exec(1, "while True: pass")).ok().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    lp.submit(exec(2, "pass")).ok().unwrap();
    lp.submit(exec(3, "pass")).ok().unwrap();
    lp.close();
    assert!(matches!(lp.submit(exec(4, "pass")), Err(SubmitError::Closed(_))));
    let mut outcomes = vec![];
    loop {
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Event::Batch(b) => outcomes.extend(b),
            Event::Exited(why) => {
                assert_eq!(why, None);
                break;
            }
        }
    }
    // The running request was interrupted by the close; it and the queued ones are
    // answered, none is dropped.
    assert_eq!(
        outcomes,
        vec![(1, Err(CallError::Closed)), (2, Err(CallError::Closed)), (3, Err(CallError::Closed))]
    );
}

#[test]
fn a_parked_thread_wakes_for_new_work() {
    let (lp, rx) = start(LoopConfig { spin: Duration::from_micros(10), ..LoopConfig::default() });
    std::thread::sleep(Duration::from_millis(100)); // long past the spin: parked
    let t0 = Instant::now();
    lp.submit(exec(1, "pass")).ok().unwrap();
    collect(&rx, 1);
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    lp.close();
}
