//! Value <-> Python conversion rules (docs/type-conversion.md).
mod common;

use pybeam_core::convert::{from_python, to_python, ToValueError};
use pybeam_core::{Bytes, Value, MAX_DEPTH};
use pyo3::prelude::*;

fn roundtrip(v: &Value) -> Value {
    common::python();
    Python::attach(|py| {
        let obj = to_python(py, v).expect("to python");
        from_python(&obj).expect("from python")
    })
}

fn py_eval(code: &str) -> Result<Value, ToValueError> {
    common::python();
    Python::attach(|py| {
        let code = std::ffi::CString::new(code).unwrap();
        let obj = py.eval(&code, None, None).expect("eval");
        from_python(&obj)
    })
}

fn py_type_of(v: &Value) -> String {
    common::python();
    Python::attach(|py| {
        let obj = to_python(py, v).unwrap();
        pybeam_core::convert::qualified_type_name(&obj)
    })
}

#[test]
fn integers_of_any_size() {
    for v in [0i64, 1, -1, i64::MAX, i64::MIN] {
        assert_eq!(roundtrip(&Value::Int(v)), Value::Int(v));
    }
    let big = Value::BigInt { negative: true, magnitude: vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10] };
    assert_eq!(roundtrip(&big), big);
    assert_eq!(
        py_eval("2**64").unwrap(),
        Value::BigInt { negative: false, magnitude: vec![0, 0, 0, 0, 0, 0, 0, 0, 1] }
    );
    assert_eq!(py_eval("-(2**63)").unwrap(), Value::Int(i64::MIN));
    assert_eq!(
        py_eval("-(2**63) - 1").unwrap(),
        Value::BigInt { negative: true, magnitude: vec![1, 0, 0, 0, 0, 0, 0, 0x80] }
    );
}

#[test]
fn floats_and_non_finite() {
    assert_eq!(roundtrip(&Value::Float(1.5)), Value::Float(1.5));
    assert_eq!(roundtrip(&Value::Float(f64::INFINITY)), Value::Float(f64::INFINITY));
    assert_eq!(roundtrip(&Value::Float(f64::NEG_INFINITY)), Value::Float(f64::NEG_INFINITY));
    match roundtrip(&Value::Float(f64::NAN)) {
        Value::Float(f) => assert!(f.is_nan()),
        other => panic!("expected NaN, got {other:?}"),
    }
}

#[test]
fn booleans_none_and_atoms() {
    assert_eq!(roundtrip(&Value::Bool(true)), Value::Bool(true));
    assert_eq!(roundtrip(&Value::Bool(false)), Value::Bool(false));
    assert_eq!(roundtrip(&Value::None), Value::None);
    assert_eq!(py_type_of(&Value::atom("hello")), "erlang.Atom");
    assert_eq!(roundtrip(&Value::atom("hello")), Value::atom("hello"));
    // bool is an int subclass: it must not come back as an integer
    assert_eq!(py_eval("True").unwrap(), Value::Bool(true));
}

#[test]
fn binaries_strings_and_bytes() {
    assert_eq!(py_type_of(&Value::binary("héllo")), "str");
    assert_eq!(roundtrip(&Value::binary("héllo")), Value::binary("héllo"));
    let invalid = Value::Binary(Bytes::Owned(vec![0xff, 0xfe, 0]));
    assert_eq!(py_type_of(&invalid), "bytes");
    assert_eq!(roundtrip(&invalid), Value::Bytes(Bytes::Owned(vec![0xff, 0xfe, 0])));
    let explicit = Value::Bytes(Bytes::from("abc"));
    assert_eq!(py_type_of(&explicit), "bytes");
    assert_eq!(py_eval("bytearray(b'xy')").unwrap(), Value::Bytes(Bytes::from("xy")));
}

#[test]
fn large_results_are_shared_not_copied() {
    let v = py_eval("b'x' * 1_000_000").unwrap();
    match v {
        Value::Bytes(Bytes::Shared(s)) => assert_eq!(s.as_slice().len(), 1_000_000),
        other => panic!("expected a shared buffer, got {other:?}"),
    }
    match py_eval("'é' * 100_000").unwrap() {
        Value::Binary(b @ Bytes::Shared(_)) => assert_eq!(b.as_slice(), "é".repeat(100_000).as_bytes()),
        other => panic!("expected a shared buffer, got {other:?}"),
    }
}

#[test]
fn containers() {
    let v = Value::List(vec![
        Value::Tuple(vec![Value::Int(1), Value::binary("a")]),
        Value::Map(vec![(Value::binary("k"), Value::List(vec![]))]),
        Value::Tuple(vec![]),
    ]);
    assert_eq!(roundtrip(&v), v);
    match py_eval("{1, 2, 3}").unwrap() {
        Value::List(mut items) => {
            items.sort_by_key(|v| if let Value::Int(i) = v { *i } else { 0 });
            assert_eq!(items, vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        }
        other => panic!("set should become a list, got {other:?}"),
    }
    assert_eq!(py_eval("frozenset()").unwrap(), Value::List(vec![]));
    // dict subclasses and namedtuples convert as their base types
    assert_eq!(
        py_eval("__import__('collections').OrderedDict(a=1)").unwrap(),
        Value::Map(vec![(Value::binary("a"), Value::Int(1))])
    );
}

#[test]
fn pids_and_refs_roundtrip_opaquely() {
    let pid = Value::Pid(vec![131, 88, 119, 3, b'a', b'@', b'b', 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(py_type_of(&pid), "erlang.Pid");
    assert_eq!(roundtrip(&pid), pid);
    let r = Value::Ref(vec![131, 90, 0, 1, 1, 2, 3]);
    assert_eq!(py_type_of(&r), "erlang.Ref");
    assert_eq!(roundtrip(&r), r);
}

#[test]
fn unsupported_objects_are_named() {
    match py_eval("object()") {
        Err(ToValueError::Unsupported(name)) => assert_eq!(name, "object"),
        other => panic!("expected unsupported, got {other:?}"),
    }
    match py_eval("__import__('decimal').Decimal(1)") {
        Err(ToValueError::Unsupported(name)) => assert_eq!(name, "decimal.Decimal"),
        other => panic!("expected unsupported, got {other:?}"),
    }
}

#[test]
fn depth_is_bounded_both_ways() {
    common::on_loop_stack(depth_checks);
}

fn depth_checks() {
    // nest(n) is a list n levels deep around 0: depth n + 1 counting the scalar.
    let nest = |n: usize| format!("__import__('functools').reduce(lambda acc, _: [acc], range({n}), 0)");
    assert!(py_eval(&nest(MAX_DEPTH - 1)).is_ok());
    assert!(matches!(py_eval(&nest(MAX_DEPTH)), Err(ToValueError::TooDeep)));
    // a list that contains itself is refused, not a stack overflow
    let cyclic = Python::attach(|py| {
        let scope = pyo3::types::PyDict::new(py);
        py.run(c"l = []\nl.append(l)", None, Some(&scope)).unwrap();
        from_python(&scope.get_item("l").unwrap().unwrap())
    });
    assert!(matches!(cyclic, Err(ToValueError::TooDeep)));
    let mut deep = Value::Int(0);
    for _ in 0..MAX_DEPTH + 1 {
        deep = Value::List(vec![deep]);
    }
    Python::attach(|py| assert!(to_python(py, &deep).is_err()));
}

#[test]
fn retired_python_buffers_are_released_under_the_gil() {
    common::python();
    let (value, weak_count) = Python::attach(|py| {
        let code = c"__import__('sys').getrefcount";
        let getrefcount = py.eval(code, None, None).unwrap().unbind();
        let obj = py.eval(c"bytes(range(256)) * 1024", None, None).unwrap();
        let before: isize = getrefcount.bind(py).call1((&obj,)).unwrap().extract().unwrap();
        let value = from_python(&obj).unwrap();
        let held: isize = getrefcount.bind(py).call1((&obj,)).unwrap().extract().unwrap();
        assert_eq!(held, before + 1, "the shared buffer holds one reference");
        (value, (obj.unbind(), getrefcount, before))
    });
    // Dropped from a thread that does not hold the GIL, through the reaper.
    pybeam_core::reaper::retire(Box::new(value));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pybeam_core::reaper::pending() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(pybeam_core::reaper::pending(), 0);
    let (obj, getrefcount, before) = weak_count;
    Python::attach(|py| {
        let now: isize = getrefcount.bind(py).call1((obj.bind(py),)).unwrap().extract().unwrap();
        assert_eq!(now, before, "the reference was released");
    });
}
