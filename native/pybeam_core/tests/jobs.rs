//! Executing jobs: calls, eval, exec, and how Python errors are reported.
mod common;

use pybeam_core::jobs::{CallError, CallTarget, Executor, Job};
use pybeam_core::{Outcome, Value};
use pyo3::prelude::*;

fn run(job: Job) -> Outcome {
    common::python();
    Python::attach(|py| Executor::new(py).unwrap().run(py, job))
}

fn call(module: &str, function: &str, args: Vec<Value>) -> Outcome {
    run(Job::Call(CallTarget { module: module.into(), function: function.into(), args, kwargs: vec![] }))
}

fn python_error(outcome: Outcome) -> (String, String, String) {
    match outcome {
        Err(CallError::Python(e)) => (e.type_name, e.message, e.traceback),
        other => panic!("expected a Python error, got {other:?}"),
    }
}

#[test]
fn calls_module_functions_and_attribute_paths() {
    assert_eq!(call("math", "sqrt", vec![Value::Float(16.0)]), Ok(Value::Float(4.0)));
    assert_eq!(
        call("os.path", "join", vec![Value::binary("a"), Value::binary("b")]),
        Ok(Value::binary("a/b"))
    );
    assert_eq!(
        call("builtins", "str.upper", vec![Value::binary("abc")]),
        Ok(Value::binary("ABC"))
    );
}

#[test]
fn keyword_arguments() {
    let out = run(Job::Call(CallTarget {
        module: "builtins".into(),
        function: "int".into(),
        args: vec![Value::binary("ff")],
        kwargs: vec![("base".into(), Value::Int(16))],
    }));
    assert_eq!(out, Ok(Value::Int(255)));
    let twice = run(Job::Call(CallTarget {
        module: "builtins".into(),
        function: "dict".into(),
        args: vec![],
        kwargs: vec![("a".into(), Value::Int(1)), ("a".into(), Value::Int(2))],
    }));
    let (ty, msg, _) = python_error(twice);
    assert_eq!((ty.as_str(), msg.as_str()), ("TypeError", "keyword argument 'a' given twice"));
}

#[test]
fn eval_and_exec_share_the_executor_globals() {
    common::python();
    Python::attach(|py| {
        let ex = Executor::new(py).unwrap();
        assert_eq!(ex.run(py, Job::Exec { code: b"x = 40".to_vec() }), Ok(Value::None));
        assert_eq!(
            ex.run(py, Job::Eval { code: b"x + y".to_vec(), locals: vec![("y".into(), Value::Int(2))] }),
            Ok(Value::Int(42))
        );
        // locals do not leak into the globals
        let (ty, _, _) = python_error(ex.run(py, Job::Eval { code: b"y".to_vec(), locals: vec![] }));
        assert_eq!(ty, "NameError");
    });
}

#[test]
fn errors_carry_qualified_type_message_and_traceback() {
    let (ty, msg, tb) = python_error(call("json", "loads", vec![Value::binary("{")]));
    assert_eq!(ty, "json.decoder.JSONDecodeError");
    assert!(msg.starts_with("Expecting property name"), "{msg}");
    assert!(tb.starts_with("Traceback (most recent call last):"), "{tb}");
    assert!(tb.contains("json/decoder.py"), "{tb}");
    let (ty, msg, _) = python_error(call("math", "sqrt", vec![Value::Int(-1)]));
    assert_eq!((ty.as_str(), msg.as_str()), ("ValueError", "math domain error"));
}

#[test]
fn base_exceptions_are_errors_not_exits() {
    let (ty, msg, _) = python_error(run(Job::Exec { code: b"raise SystemExit(3)".to_vec() }));
    assert_eq!((ty.as_str(), msg.as_str()), ("SystemExit", "3"));
    let (ty, _, _) = python_error(run(Job::Exec { code: b"raise KeyboardInterrupt".to_vec() }));
    assert_eq!(ty, "KeyboardInterrupt");
}

#[test]
fn bad_code_is_reported_by_python() {
    let (ty, _, _) = python_error(run(Job::Eval { code: b"1 +".to_vec(), locals: vec![] }));
    assert_eq!(ty, "SyntaxError");
    let (ty, msg, _) = python_error(run(Job::Eval { code: b"1\x00+1".to_vec(), locals: vec![] }));
    assert!(ty == "ValueError" || ty == "SyntaxError", "{ty}");
    assert!(msg.contains("null bytes"), "{msg}");
}

#[test]
fn unconvertible_results_name_their_type() {
    assert_eq!(
        call("builtins", "object", vec![]),
        Err(CallError::UnsupportedType("object".into()))
    );
}
