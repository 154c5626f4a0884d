//! Erlang terms -> owned `Value`s, on the caller's scheduler.
//!
//! Decoding charges a budget per node. A normal scheduler gets a small one (a NIF should
//! return within about a millisecond); when it runs out, the caller retries the same request
//! on a dirty scheduler with no budget. Depth is bounded everywhere by `MAX_DEPTH`.

use std::sync::Arc;

use rustler::types::tuple::get_tuple;
use rustler::{Binary, ListIterator, MapIterator, Term, TermType};

use pybeam_core::value::bigint_from_etf;
use pybeam_core::{Bytes, CallTarget, Job, Name, Value, MAX_DEPTH};

use crate::atoms;
use crate::kept_env::{KeptBinary, KeptEnv};

/// The items of a proper list. rustler's list iterator panics at an improper tail, so
/// every list a NIF walks comes through here (enif_get_list_length fails on improper lists).
pub fn proper_list(term: Term<'_>) -> Option<ListIterator<'_>> {
    term.list_length().ok()?;
    term.decode::<ListIterator>().ok()
}

/// Nodes a normal-scheduler NIF may decode before handing over to a dirty scheduler.
pub const NORMAL_BUDGET: usize = 20_000;
/// Binaries at least this large are shared with the loop thread rather than copied here.
const SHARE_THRESHOLD: usize = 4096;

pub enum DecodeError<'a> {
    /// A term with no Python form (fun, port, improper list, bitstring).
    Unsupported(Term<'a>),
    TooDeep,
    /// The budget ran out: retry on a dirty scheduler.
    NeedsDirty,
    /// The request itself is malformed; the reason names what is wrong.
    BadArg(&'static str),
}

enum Started<'a> {
    Leaf(Value),
    Container(Open<'a>),
}

/// A container being decoded: what is built so far and where to continue.
enum Open<'a> {
    List { items: Vec<Value>, rest: Term<'a>, whole: Term<'a> },
    Tuple { items: Vec<Value>, terms: Vec<Term<'a>>, next: usize },
    /// Children alternate key, value; `key` holds a decoded key awaiting its value.
    Map { pairs: Vec<(Value, Value)>, entries: Vec<(Term<'a>, Term<'a>)>, next: usize, key: Option<Value> },
}

impl<'a> Open<'a> {
    /// The next child term to decode, `None` when the container is complete.
    fn next_child(&mut self) -> Result<Option<Term<'a>>, DecodeError<'a>> {
        match self {
            Open::List { rest, whole, .. } => match rest.list_get_cell() {
                Ok((head, tail)) => {
                    *rest = tail;
                    Ok(Some(head))
                }
                Err(_) if rest.is_empty_list() => Ok(None),
                Err(_) => Err(DecodeError::Unsupported(*whole)),
            },
            Open::Tuple { terms, next, .. } => {
                let child = terms.get(*next).copied();
                *next += 1;
                Ok(child)
            }
            Open::Map { entries, next, .. } => {
                let child = entries.get(*next / 2).map(|(k, v)| if *next % 2 == 0 { *k } else { *v });
                *next += 1;
                Ok(child)
            }
        }
    }

    fn accept(&mut self, v: Value) {
        match self {
            Open::List { items, .. } | Open::Tuple { items, .. } => items.push(v),
            Open::Map { pairs, key, .. } => match key.take() {
                None => *key = Some(v),
                Some(k) => pairs.push((k, v)),
            },
        }
    }

    fn finish(self) -> Value {
        match self {
            Open::List { items, .. } => Value::List(items),
            Open::Tuple { items, .. } => Value::Tuple(items),
            Open::Map { pairs, .. } => Value::Map(pairs),
        }
    }
}

pub struct Decoder {
    /// Created on the first large binary; each shared binary keeps it alive.
    keep: Option<Arc<KeptEnv>>,
    budget: Option<usize>,
}

impl Decoder {
    pub fn new(budget: Option<usize>) -> Self {
        Decoder { keep: None, budget }
    }

    /// The budget not yet spent (for the next request of a batch).
    pub fn budget_left(&self) -> Option<usize> {
        self.budget
    }

    fn charge<'a>(&mut self, cost: usize) -> Result<(), DecodeError<'a>> {
        if let Some(left) = self.budget.as_mut() {
            if *left < cost {
                return Err(DecodeError::NeedsDirty);
            }
            *left -= cost;
        }
        Ok(())
    }

    /// `{call, M, F, Args, Kwargs} | {eval, Code, Locals} | {exec, Code}`,
    /// `{async, M, F, Args, Kwargs} | {gather, [{M, F, Args, Kwargs}]}`,
    /// `{stream, M, F, Args, Kwargs, Window}`
    pub fn job<'a>(&mut self, term: Term<'a>) -> Result<Job, DecodeError<'a>> {
        let parts = get_tuple(term).map_err(|_| DecodeError::BadArg("job is not a tuple"))?;
        match parts.as_slice() {
            [tag, m, f, a, k] if atoms::call() == *tag => Ok(Job::Call(self.target(*m, *f, *a, *k)?)),
            [tag, m, f, a, k] if atoms::async_() == *tag => Ok(Job::Async(self.target(*m, *f, *a, *k)?)),
            [tag, m, f, a, k, window] if atoms::stream() == *tag => {
                let window = window
                    .decode::<usize>()
                    .ok()
                    .filter(|w| (1..=1 << 20).contains(w))
                    .ok_or(DecodeError::BadArg("window must be an integer from 1 to 1048576"))?;
                Ok(Job::Stream { target: self.target(*m, *f, *a, *k)?, window })
            }
            [tag, items] if atoms::gather() == *tag => Ok(Job::Gather(self.targets(*items)?)),
            [tag, code, locals] if atoms::eval() == *tag => Ok(Job::Eval {
                code: code_bytes(*code)?,
                locals: self.keywords(*locals, "locals must be a map")?,
            }),
            [tag, code] if atoms::exec() == *tag => Ok(Job::Exec { code: code_bytes(*code)? }),
            _ => Err(DecodeError::BadArg("unknown job")),
        }
    }

    fn target<'a>(&mut self, m: Term<'a>, f: Term<'a>, a: Term<'a>, k: Term<'a>) -> Result<CallTarget, DecodeError<'a>> {
        Ok(CallTarget {
            module: name(m, "module must be an atom or a UTF-8 binary")?,
            function: name(f, "function must be an atom or a UTF-8 binary")?,
            args: self.args(a)?,
            kwargs: self.keywords(k, "kwargs must be a map")?,
        })
    }

    /// A gather's items: a proper list of `{M, F, Args, Kwargs}`.
    fn targets<'a>(&mut self, term: Term<'a>) -> Result<Vec<CallTarget>, DecodeError<'a>> {
        let mut out = Vec::new();
        let mut rest = term;
        while let Ok((head, tail)) = rest.list_get_cell() {
            self.charge(1)?;
            match get_tuple(head).ok().as_deref() {
                Some([m, f, a, k]) => out.push(self.target(*m, *f, *a, *k)?),
                _ => return Err(DecodeError::BadArg("each gather item must be {Module, Function, Args, Kwargs}")),
            }
            rest = tail;
        }
        if !rest.is_empty_list() {
            return Err(DecodeError::BadArg("gather items must be a proper list"));
        }
        Ok(out)
    }

    /// Each argument gets the full depth budget: the list itself is not a Python value.
    fn args<'a>(&mut self, term: Term<'a>) -> Result<Vec<Value>, DecodeError<'a>> {
        if !(term.is_list() || term.is_empty_list()) {
            return Err(DecodeError::BadArg("args must be a list"));
        }
        let mut out = Vec::new();
        let mut rest = term;
        while let Ok((head, tail)) = rest.list_get_cell() {
            out.push(self.value(head)?);
            rest = tail;
        }
        if !rest.is_empty_list() {
            return Err(DecodeError::BadArg("args must be a proper list"));
        }
        Ok(out)
    }

    /// A map whose keys are atoms or UTF-8 binaries (kwargs, eval locals).
    fn keywords<'a>(
        &mut self,
        term: Term<'a>,
        not_map: &'static str,
    ) -> Result<Vec<(Name, Value)>, DecodeError<'a>> {
        let iter = MapIterator::new(term).ok_or(DecodeError::BadArg(not_map))?;
        let mut out = Vec::new();
        for (k, v) in iter {
            let key = name(k, "keyword names must be atoms or UTF-8 binaries")?;
            out.push((key, self.value(v)?));
        }
        Ok(out)
    }

    /// Decodes one term. The walk keeps its own stack of open containers instead of
    /// recursing: a scheduler's C stack (about 1 MB, 320 KB on dirty schedulers) cannot
    /// hold MAX_DEPTH recursive frames.
    pub fn value<'a>(&mut self, root: Term<'a>) -> Result<Value, DecodeError<'a>> {
        let mut open: Vec<Open<'a>> = Vec::new();
        let mut next = root;
        loop {
            let mut done = match self.start(next)? {
                Started::Leaf(v) => v,
                Started::Container(frame) => {
                    if open.len() + 1 >= MAX_DEPTH {
                        return Err(DecodeError::TooDeep);
                    }
                    open.push(frame);
                    match open.last_mut().map(Open::next_child).transpose()?.flatten() {
                        Some(child) => {
                            next = child;
                            continue;
                        }
                        None => open.pop().map(Open::finish).unwrap_or(Value::None),
                    }
                }
            };
            // Hand the finished value to its parent; close every parent it completes.
            loop {
                let Some(parent) = open.last_mut() else { return Ok(done) };
                parent.accept(done);
                match parent.next_child()? {
                    Some(child) => {
                        next = child;
                        break;
                    }
                    None => done = open.pop().map(Open::finish).unwrap_or(Value::None),
                }
            }
        }
    }

    /// A scalar's value, or a container to open.
    fn start<'a>(&mut self, term: Term<'a>) -> Result<Started<'a>, DecodeError<'a>> {
        self.charge(1)?;
        Ok(Started::Leaf(match term.get_type() {
            TermType::Integer => match term.decode::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => bigint_from_etf(term.to_binary().as_slice())
                    .ok_or(DecodeError::Unsupported(term))?,
            },
            TermType::Float => Value::Float(term.decode::<f64>().map_err(|_| DecodeError::Unsupported(term))?),
            TermType::Atom => atom_value(term),
            TermType::Binary => Value::Binary(self.binary(term)?),
            TermType::List => {
                return Ok(Started::Container(Open::List { items: Vec::new(), rest: term, whole: term }))
            }
            TermType::Tuple => {
                let terms = get_tuple(term).map_err(|_| DecodeError::Unsupported(term))?;
                if let [tag, payload] = terms.as_slice() {
                    if atoms::bytes() == *tag && payload.is_binary() {
                        return Ok(Started::Leaf(Value::Bytes(self.binary(*payload)?)));
                    }
                }
                return Ok(Started::Container(Open::Tuple { items: Vec::with_capacity(terms.len()), terms, next: 0 }));
            }
            TermType::Map => {
                let entries: Vec<_> = MapIterator::new(term).ok_or(DecodeError::Unsupported(term))?.collect();
                return Ok(Started::Container(Open::Map {
                    pairs: Vec::with_capacity(entries.len()),
                    entries,
                    next: 0,
                    key: None,
                }));
            }
            TermType::Pid => Value::Pid(term.to_binary().as_slice().to_vec()),
            TermType::Ref => Value::Ref(term.to_binary().as_slice().to_vec()),
            TermType::Fun | TermType::Port | TermType::Unknown => return Err(DecodeError::Unsupported(term)),
        }))
    }

    fn binary<'a>(&mut self, term: Term<'a>) -> Result<Bytes, DecodeError<'a>> {
        // Bitstrings that are not whole bytes fail to inspect and are refused.
        let bin = Binary::from_term(term).map_err(|_| DecodeError::Unsupported(term))?;
        if bin.len() >= SHARE_THRESHOLD {
            let keep = self.keep.get_or_insert_with(|| Arc::new(KeptEnv::new()));
            let shared = KeptBinary::new(keep, term).ok_or(DecodeError::Unsupported(term))?;
            return Ok(Bytes::Shared(Arc::new(shared)));
        }
        self.charge(bin.len() / 256)?;
        Ok(Bytes::Owned(bin.as_slice().to_vec()))
    }
}

fn atom_value(term: Term<'_>) -> Value {
    if atoms::true_() == term {
        Value::Bool(true)
    } else if atoms::false_() == term {
        Value::Bool(false)
    } else if atoms::undefined() == term || atoms::none() == term || atoms::nil() == term {
        Value::None
    } else if atoms::nan() == term {
        Value::Float(f64::NAN)
    } else if atoms::infinity() == term {
        Value::Float(f64::INFINITY)
    } else if atoms::neg_infinity() == term {
        Value::Float(f64::NEG_INFINITY)
    } else {
        Value::Atom(atom_name(term))
    }
}

/// The atom's name as UTF-8. Before OTP 26 the NIF API reads names only as Latin-1, so an
/// atom with a wider character is read from its external term format instead.
fn atom_name(term: Term<'_>) -> String {
    if let Ok(name) = term.atom_to_string() {
        return name;
    }
    let etf = term.to_binary();
    let b = etf.as_slice();
    let utf8 = match b.get(1) {
        Some(118) => b.get(4..),
        Some(119) => b.get(3..),
        _ => None,
    };
    String::from_utf8_lossy(utf8.unwrap_or_default()).into_owned()
}

/// A module, function or keyword name: an atom or a UTF-8 binary.
fn name<'a>(term: Term<'a>, reason: &'static str) -> Result<Name, DecodeError<'a>> {
    if term.is_atom() {
        return Ok(ascii_atom(term).unwrap_or_else(|| Name::new(&atom_name(term))));
    }
    let bin = Binary::from_term(term).map_err(|_| DecodeError::BadArg(reason))?;
    std::str::from_utf8(bin.as_slice()).map(Name::new).map_err(|_| DecodeError::BadArg(reason))
}

/// An ASCII atom's name, read without an allocation (nearly every module and function
/// name); None for any other atom.
fn ascii_atom(term: Term<'_>) -> Option<Name> {
    // Atoms have at most 255 characters; one more byte for the NUL.
    let mut buf = [0u8; 256];
    // SAFETY: `term` is an atom of the env it belongs to; `buf` is writable for its whole
    // length, which is what we pass; enif_get_atom writes at most that many bytes.
    let written = unsafe {
        rustler::sys::enif_get_atom(
            term.get_env().as_c_arg(),
            term.as_c_arg(),
            buf.as_mut_ptr().cast(),
            buf.len() as std::ffi::c_uint,
            rustler::sys::ErlNifCharEncoding::ERL_NIF_LATIN1,
        )
    };
    // The count includes the NUL; 0 means failure (not representable in Latin-1).
    let len = usize::try_from(written).ok()?.checked_sub(1)?;
    let bytes = buf.get(..len)?;
    if !bytes.is_ascii() {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(Name::new)
}

/// Source code: a binary or an iolist.
fn code_bytes<'a>(term: Term<'a>) -> Result<Vec<u8>, DecodeError<'a>> {
    Binary::from_iolist(term)
        .map(|b| b.as_slice().to_vec())
        .map_err(|_| DecodeError::BadArg("code must be a binary or an iolist"))
}
