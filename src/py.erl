%% @doc Calling Python from Erlang.
%%
%% Every function here runs Python on a loop's own thread, never on a BEAM scheduler.
%% A call takes a callback id, monitors the loop's event process with an alias, submits
%% the request in one NIF call and waits for `{Alias, Result}'. See docs/architecture.md.
%%
%% Errors have one shape on every path, see docs/errors.md. Bad argument types raise
%% `error:badarg' with extended error information (`erl_error' prints the reason).
-module(py).

-export([call/3, call/4, call/5, eval/1, eval/2, exec/1]).
-export([async_call/3, async_call/4, async_call/5, async_await/1, async_await/2,
         async_gather/1, async_gather/2, async_stream/3, async_stream/4, async_stream/5,
         async_cancel/1]).
-export([register_function/2, unregister_function/1]).
-export([format_error/2]).

-type name() :: atom() | binary().
-type code() :: iodata().
-type call_opts() :: #{timeout => timeout(), loop => py_loops:handle() | term()}
                   | [{timeout, timeout()} | {loop, py_loops:handle() | term()}].
-type python_error() :: {python, Type :: binary(), Message :: binary(), Traceback :: binary()}.
-type error() :: python_error()
               | timeout
               | overloaded
               | not_started
               | loop_destroyed
               | {event_loop_down, term()}
               | {unsupported_term, term()}
               | {unsupported_type, binary()}
               | {too_deep, pos_integer()}
               | {internal_error, binary()}
               | {gather_failed, [{pos_integer(), error()}]}
               | cancelled
               | no_asyncio_loop.
-type gather_item() :: {name(), name(), list()} | {name(), name(), list(), map()}.
-type stream_opts() :: #{window => pos_integer(), loop => py_loops:handle() | term()}.
-type stream_message() :: {py_stream, reference(), {data, term()} | done | {error, error() | cancelled}}.
-export_type([name/0, code/0, call_opts/0, python_error/0, error/0,
              gather_item/0, stream_opts/0, stream_message/0]).

-define(DEFAULT_TIMEOUT, 30000).
-define(DEFAULT_WINDOW, 64).
-define(UNMONITORED_WAIT, 2).
-define(BADARG(Cause, Args),
        erlang:error(badarg, Args, [{error_info, #{module => ?MODULE, cause => Cause}}])).

%% @equiv call(Module, Function, Args, #{}, #{})
-spec call(name(), name(), list()) -> {ok, term()} | {error, error()}.
call(Module, Function, Args) ->
    call(Module, Function, Args, #{}, #{}).

%% @equiv call(Module, Function, Args, Kwargs, #{})
-spec call(name(), name(), list(), map()) -> {ok, term()} | {error, error()}.
call(Module, Function, Args, Kwargs) ->
    call(Module, Function, Args, Kwargs, #{}).

%% @doc Calls `Module.Function(*Args, **Kwargs)'.
%%
%% `Module' may be dotted (`\'os.path\''); `Function' may be a dotted attribute path
%% (`<<"Path.home">>'). Kwargs keys are atoms or binaries. Options: `timeout' in
%% milliseconds, `infinity' or at most 4294967295 as for `receive ... after' (default
%% 30000; on expiry the Python code is interrupted and the caller gets
%% `{error, timeout}'), and `loop', an explicit loop `{LoopRef, EventProc}' or any
%% other term as a sharding key.
-spec call(name(), name(), list(), map(), call_opts()) -> {ok, term()} | {error, error()}.
call(Module, Function, Args, Kwargs, Opts) ->
    Checks = [{name, module, Module}, {name, function, Function},
              {list, args, Args}, {map, kwargs, Kwargs}],
    case checked(Checks, fun() -> request({call, Module, Function, Args, Kwargs}, Opts) end) of
        {badarg, Cause} -> ?BADARG(Cause, [Module, Function, Args, Kwargs, Opts]);
        Result -> Result
    end.

%% @equiv eval(Code, #{})
-spec eval(code()) -> {ok, term()} | {error, error()}.
eval(Code) ->
    eval(Code, #{}).

%% @doc Evaluates a Python expression in the loop's globals, with `Locals' (a map with
%% atom or binary keys) as extra local names.
-spec eval(code(), map()) -> {ok, term()} | {error, error()}.
eval(Code, Locals) ->
    case checked([{code, code, Code}, {map, locals, Locals}],
                 fun() -> request({eval, Code, Locals}, #{}) end) of
        {badarg, Cause} -> ?BADARG(Cause, [Code, Locals]);
        Result -> Result
    end.

%% @doc Executes Python statements in the loop's globals (shared by later `exec' and
%% `eval' calls on the same loop).
-spec exec(code()) -> ok | {error, error()}.
exec(Code) ->
    case checked([{code, code, Code}], fun() -> request({exec, Code}, #{}) end) of
        {badarg, Cause} -> ?BADARG(Cause, [Code]);
        {ok, _} -> ok;
        Error -> Error
    end.

%%% Async: coroutines on the loop thread's asyncio loop

%% @equiv async_call(Module, Function, Args, #{}, #{})
-spec async_call(name(), name(), list()) -> reference().
async_call(Module, Function, Args) ->
    async_call(Module, Function, Args, #{}, #{}).

%% @equiv async_call(Module, Function, Args, Kwargs, #{})
-spec async_call(name(), name(), list(), map()) -> reference().
async_call(Module, Function, Args, Kwargs) ->
    async_call(Module, Function, Args, Kwargs, #{}).

%% @doc Starts `Module.Function(*Args, **Kwargs)' on a loop's asyncio loop and returns at
%% once with a reference for {@link async_await/2}.
%%
%% A coroutine function, or a function that returns an awaitable, runs as an asyncio task,
%% concurrently with the loop's other tasks; a plain function's value is the result. Only
%% the calling process can await the reference, and it should: until then the reference
%% is remembered in its process dictionary. Option `loop' as for {@link call/5}.
-spec async_call(name(), name(), list(), map(), call_opts()) -> reference().
async_call(Module, Function, Args, Kwargs, Opts) ->
    Checks = [{name, module, Module}, {name, function, Function},
              {list, args, Args}, {map, kwargs, Kwargs}],
    Start = fun() -> start_async({async, Module, Function, Args, Kwargs}, Opts) end,
    case checked(Checks, Start) of
        {badarg, Cause} -> ?BADARG(Cause, [Module, Function, Args, Kwargs, Opts]);
        Ref -> Ref
    end.

%% @equiv async_await(Ref, 30000)
-spec async_await(reference()) -> {ok, term()} | {error, error()}.
async_await(Ref) ->
    async_await(Ref, ?DEFAULT_TIMEOUT).

%% @doc Waits up to `Timeout' ms for the result of {@link async_call/5}. On timeout the
%% task is cancelled and `{error, timeout}' returned; the reference is then spent, and no
%% late message reaches the caller.
-spec async_await(reference(), timeout()) -> {ok, term()} | {error, error()}.
async_await(Ref, Timeout) ->
    is_reference(Ref) orelse ?BADARG({ref, Ref}, [Ref, Timeout]),
    py_event_proc:valid_timeout(Timeout) orelse ?BADARG({timeout, Timeout}, [Ref, Timeout]),
    case erase({?MODULE, async, Ref}) of
        undefined -> ?BADARG({not_async, Ref}, [Ref, Timeout]);
        {Loop, Id} -> await_async(Ref, Loop, Id, Timeout)
    end.

await_async(Ref, Loop, Id, Timeout) ->
    receive
        {Ref, Result} -> Result;
        {'DOWN', Ref, process, _, Why} -> {error, {event_loop_down, Why}}
    after Timeout ->
        abandon(Ref, Loop, Id),
        {error, timeout}
    end.

%% @doc Cancels an async call (its task gets `CancelledError') or a stream (its generator is
%% closed, so its `finally' blocks run). An async call's reference is spent, and nothing
%% more arrives for it. A stream's consumer gets `{py_stream, Ref, {error, cancelled}}' as
%% its last message; when the caller is the consumer, that and any items still in its
%% mailbox are removed.
-spec async_cancel(reference()) -> ok | {error, not_found}.
async_cancel(Ref) when is_reference(Ref) ->
    case erase({?MODULE, async, Ref}) of
        {Loop, Id} ->
            abandon(Ref, Loop, Id),
            ok;
        undefined ->
            cancel_stream(Ref)
    end;
async_cancel(Ref) ->
    ?BADARG({ref, Ref}, [Ref]).

cancel_stream(Ref) ->
    %% The table goes with the application.
    Found = try ets:lookup(py_streams, Ref) catch error:badarg -> [] end,
    case Found of
        [{Ref, EventProc, Id}] ->
            Reply = case py_event_proc:call(EventProc, {stream_cancel, Id}) of
                        ok -> ok;
                        _Gone -> {error, not_found}
                    end,
            erlang:demonitor(Ref, [flush]),
            flush_stream(Ref),
            Reply;
        [] ->
            {error, not_found}
    end.

flush_stream(Ref) ->
    receive {py_stream, Ref, _} -> flush_stream(Ref) after 0 -> ok end.

%% The caller no longer wants the result: the alias is deactivated (with the monitor), a
%% result that already arrived is dropped, and the loop cancels the task.
abandon(Ref, Loop, Id) ->
    erlang:demonitor(Ref, [flush]),
    receive {Ref, _} -> ok after 0 -> ok end,
    %% A job refused at submission never reached a loop.
    Loop =:= undefined orelse py_nif:cancel(Loop, Id),
    ok.

%% Submits an async job; its result will come to a monitor alias of the event process, so
%% that a dead event process is noticed too. A refused job answers at once, in the mailbox.
start_async(Job, Opts) ->
    case options(Opts) of
        {ok, _Timeout, LoopKey} ->
            case py_loops:pick(LoopKey) of
                {ok, {Loop, EventProc}} ->
                    Id = py_callback_id:next(),
                    Ref = erlang:monitor(process, EventProc, [{alias, reply_demonitor}]),
                    case submit(Loop, Id, Ref, Job) of
                        ok ->
                            put({?MODULE, async, Ref}, {Loop, Id}),
                            Ref;
                        {badarg, _} = Bad ->
                            erlang:demonitor(Ref, [flush]),
                            Bad;
                        Refused ->
                            erlang:demonitor(Ref, [flush]),
                            refused(Refused)
                    end;
                {error, _} = Error ->
                    refused(Error)
            end;
        {badarg, _} = Bad ->
            Bad
    end.

refused(Error) ->
    Ref = make_ref(),
    put({?MODULE, async, Ref}, {undefined, 0}),
    self() ! {Ref, Error},
    Ref.

%% @equiv async_gather(Items, #{})
-spec async_gather([gather_item()]) -> {ok, [term()]} | {error, error()}.
async_gather(Items) ->
    async_gather(Items, #{}).

%% @doc Runs every item concurrently on one loop's asyncio loop (submitted together, in
%% one NIF call) and waits for all of them: `{ok, Results}' in input order, or
%% `{error, {gather_failed, [{Index, Reason}]}}' naming each item that failed (1-based).
%% `timeout' (default 30000 ms) bounds the whole gather; when it expires, the unfinished
%% items are cancelled. Whatever the outcome, no message is left in the caller's mailbox.
-spec async_gather([gather_item()], call_opts()) -> {ok, [term()]} | {error, error()}.
async_gather(Items, Opts) when is_list(Items) ->
    Targets = gather_targets(Items, 1, [Items, Opts]),
    case Targets of
        [] ->
            {ok, []};
        _ ->
            case options(Opts) of
                {ok, Timeout, LoopKey} -> gather(Targets, Timeout, LoopKey, [Items, Opts]);
                {badarg, Cause} -> ?BADARG(Cause, [Items, Opts])
            end
    end;
async_gather(Items, Opts) ->
    ?BADARG({items, Items}, [Items, Opts]).

gather_targets([Item | Rest], I, Argv) ->
    [gather_target(Item, I, Argv) | gather_targets(Rest, I + 1, Argv)];
gather_targets([], _I, _Argv) ->
    [];
gather_targets(_ImproperTail, _I, Argv) ->
    ?BADARG({items, improper_list}, Argv).

gather_target({M, F, A}, I, Argv) ->
    gather_target({M, F, A, #{}}, I, Argv);
gather_target({M, F, A, K} = T, _I, _Argv)
  when (is_atom(M) orelse is_binary(M)), (is_atom(F) orelse is_binary(F)), is_list(A), is_map(K) ->
    T;
gather_target(Item, I, Argv) ->
    ?BADARG({gather_item, I, Item}, Argv).

gather(Targets, Timeout, LoopKey, Argv) ->
    case py_loops:pick(LoopKey) of
        {ok, {Loop, EventProc}} ->
            Id = py_callback_id:next(),
            Ref = erlang:monitor(process, EventProc, [{alias, reply_demonitor}]),
            case submit(Loop, Id, Ref, {gather, Targets}) of
                ok ->
                    await_async(Ref, Loop, Id, Timeout);
                {badarg, Why} ->
                    erlang:demonitor(Ref, [flush]),
                    ?BADARG(Why, Argv);
                Refused ->
                    erlang:demonitor(Ref, [flush]),
                    Refused
            end;
        {error, _} = Error ->
            Error
    end.

%% @equiv async_stream(Module, Function, Args, #{}, #{})
-spec async_stream(name(), name(), list()) -> {ok, reference()} | {error, error()}.
async_stream(Module, Function, Args) ->
    async_stream(Module, Function, Args, #{}, #{}).

%% @equiv async_stream(Module, Function, Args, Kwargs, #{})
-spec async_stream(name(), name(), list(), map()) -> {ok, reference()} | {error, error()}.
async_stream(Module, Function, Args, Kwargs) ->
    async_stream(Module, Function, Args, Kwargs, #{}).

%% @doc Streams the items of what `Module.Function(*Args, **Kwargs)' returns: an async
%% generator, a generator, or any (async) iterable. The caller receives
%% `{py_stream, Ref, {data, Item}}' for each item, then `{py_stream, Ref, done}' or
%% `{py_stream, Ref, {error, Reason}}'.
%%
%% Backpressure: the generator runs ahead of the caller by at most `window' items (default
%% 64), and the caller's mailbox holds fewer than 2 x `window' items of the stream at any
%% time: the event process grants more only while the caller keeps up. If the caller dies,
%% or calls {@link async_cancel/1}, the generator is closed (its `finally' blocks run). If
%% the loop dies, the caller gets `{'DOWN', Ref, process, EventProc, Reason}'.
-spec async_stream(name(), name(), list(), map(), stream_opts()) -> {ok, reference()} | {error, error()}.
async_stream(Module, Function, Args, Kwargs, Opts) ->
    Argv = [Module, Function, Args, Kwargs, Opts],
    Checks = [{name, module, Module}, {name, function, Function},
              {list, args, Args}, {map, kwargs, Kwargs}],
    is_map(Opts) orelse ?BADARG({opts, Opts}, Argv),
    Window = maps:get(window, Opts, ?DEFAULT_WINDOW),
    is_integer(Window) andalso Window >= 1 andalso Window =< 1 bsl 20
        orelse ?BADARG({window, Window}, Argv),
    Job = {stream, Module, Function, Args, Kwargs, Window},
    case checked(Checks, fun() -> open_stream(Job, maps:get(loop, Opts, default)) end) of
        {badarg, Cause} -> ?BADARG(Cause, Argv);
        Result -> Result
    end.

open_stream(Job, LoopKey) ->
    case py_loops:pick(LoopKey) of
        {ok, {_Loop, EventProc}} ->
            Id = py_callback_id:next(),
            Ref = erlang:monitor(process, EventProc, [{alias, reply_demonitor}]),
            case py_event_proc:call(EventProc, {stream_open, Id, Ref, self(), Job}) of
                ok ->
                    {ok, Ref};
                Refused ->
                    erlang:demonitor(Ref, [flush]),
                    Refused
            end;
        {error, _} = Error ->
            Error
    end.

%%% Erlang functions for Python

%% @doc Makes `Fun' (called with the Python arguments) or `{Module, Function}' callable
%% from Python as `erlang.call(Name, *Args)', `await erlang.async_call(Name, *Args)' or
%% `from erlang import Name'. The function runs in an Erlang worker process (one call at a
%% time; workers are reused between calls), never on a loop thread, so it may call back
%% into Python. See docs/callbacks.md.
-spec register_function(atom() | binary(), fun() | {module(), atom()}) -> ok.
register_function(Name, Function) ->
    is_atom(Name) orelse (is_binary(Name) andalso byte_size(Name) > 0)
        orelse ?BADARG({function_name, Name}, [Name, Function]),
    case Function of
        F when is_function(F) -> ok;
        {M, F} when is_atom(M), is_atom(F) -> ok;
        _ -> ?BADARG({callback, Function}, [Name, Function])
    end,
    py_callbacks:register_function(Name, Function).

%% @doc Removes a function registered with {@link register_function/2}.
-spec unregister_function(atom() | binary()) -> ok.
unregister_function(Name) when is_atom(Name); is_binary(Name) ->
    py_callbacks:unregister_function(Name);
unregister_function(Name) ->
    ?BADARG({function_name, Name}, [Name]).

%% Runs `Run' if every argument has the right shape; a malformed argument (found here or
%% by the NIF) comes back as `{badarg, Cause}' for the API function to raise.
checked([{Kind, What, Value} | Rest], Run) ->
    case check(Kind, Value) of
        true -> checked(Rest, Run);
        false -> {badarg, {What, Value}}
    end;
checked([], Run) ->
    Run().

check(name, V) -> is_atom(V) orelse is_binary(V);
check(list, V) -> is_list(V);
check(map, V) -> is_map(V);
check(code, V) -> is_binary(V) orelse is_list(V).

%% Submits one job and waits for its result.
request(Job, Opts) ->
    case options(Opts) of
        {ok, Timeout, LoopKey} ->
            case py_loops:pick(LoopKey) of
                {ok, {Loop, EventProc}} -> run(Loop, EventProc, Job, Timeout);
                {error, _} = Error -> Error
            end;
        {badarg, _} = Bad ->
            Bad
    end.

options(Opts) when is_list(Opts) ->
    try maps:from_list(Opts) of
        Map -> options(Map)
    catch
        error:_ -> {badarg, {opts, Opts}}
    end;
options(Opts) when is_map(Opts) ->
    T = maps:get(timeout, Opts, ?DEFAULT_TIMEOUT),
    case py_event_proc:valid_timeout(T) of
        true -> {ok, T, maps:get(loop, Opts, default)};
        false -> {badarg, {timeout, T}}
    end;
options(Opts) ->
    {badarg, {opts, Opts}}.

run(Loop, EventProc, Job, Timeout) ->
    Id = py_callback_id:next(),
    Alias = alias([reply]),
    case submit(Loop, Id, Alias, Job) of
        ok ->
            await(Alias, EventProc, Loop, Id, Timeout);
        Refused ->
            unalias(Alias),
            Refused
    end.

submit(Loop, Id, Alias, Job) ->
    case py_nif:submit(Loop, Id, Alias, Job) of
        dirty -> py_nif:submit_dirty(Loop, Id, Alias, Job);
        Result -> Result
    end.

%% Most calls answer within microseconds, so the caller first waits unmonitored: a monitor
%% costs the event process two signals per call, which measurably caps throughput. Only a
%% call still waiting after ?UNMONITORED_WAIT ms monitors the event process, which catches
%% its death (a monitor of a process already dead fires at once).
await(Alias, EventProc, Loop, Id, Timeout) ->
    First = min_timeout(Timeout, ?UNMONITORED_WAIT),
    receive
        {Alias, Result} -> Result
    after First ->
        Mon = erlang:monitor(process, EventProc),
        await_monitored(Alias, Mon, Loop, Id, sub_timeout(Timeout, First))
    end.

await_monitored(Alias, Mon, Loop, Id, Timeout) ->
    receive
        {Alias, Result} ->
            erlang:demonitor(Mon, [flush]),
            Result;
        {'DOWN', Mon, process, _, Why} ->
            give_up(Alias, Loop, Id),
            {error, {event_loop_down, Why}}
    after Timeout ->
        erlang:demonitor(Mon, [flush]),
        give_up(Alias, Loop, Id),
        {error, timeout}
    end.

%% Deactivating the alias makes the runtime drop any result sent from now on; one that
%% arrived just before is flushed. The loop skips or interrupts the request.
give_up(Alias, Loop, Id) ->
    unalias(Alias),
    receive {Alias, _} -> ok after 0 -> ok end,
    py_nif:cancel(Loop, Id).

min_timeout(infinity, B) -> B;
min_timeout(A, B) -> min(A, B).

sub_timeout(infinity, _) -> infinity;
sub_timeout(A, B) -> A - B.

%% @private Readable reasons for `badarg', shown by `erl_error' and the shell.
%% Binaries, not chardata: Elixir's ErlangError requires them.
-spec format_error(term(), erlang:stacktrace()) -> #{general => binary()}.
format_error(badarg, [{_M, _F, _Args, Info} | _]) ->
    Cause = maps:get(cause, proplists:get_value(error_info, Info, #{}), undefined),
    #{general => unicode:characters_to_binary(describe(Cause))};
format_error(_, _) ->
    #{}.

describe({module, V}) -> io_lib:format("module must be an atom or a binary, got: ~0tP", [V, 10]);
describe({function, V}) -> io_lib:format("function must be an atom or a binary, got: ~0tP", [V, 10]);
describe({args, V}) -> io_lib:format("args must be a list, got: ~0tP", [V, 10]);
describe({kwargs, V}) -> io_lib:format("kwargs must be a map, got: ~0tP", [V, 10]);
describe({locals, V}) -> io_lib:format("locals must be a map, got: ~0tP", [V, 10]);
describe({code, V}) -> io_lib:format("code must be a binary or an iolist, got: ~0tP", [V, 10]);
describe({opts, V}) -> io_lib:format("options must be a map or a proplist, got: ~0tP", [V, 10]);
describe({ref, V}) -> io_lib:format("not a reference: ~0tP", [V, 10]);
describe({not_async, _}) -> "not an async call of this process (or already awaited)";
describe({items, V}) -> io_lib:format("gather items must be a list, got: ~0tP", [V, 10]);
describe({gather_item, I, V}) ->
    io_lib:format("gather item ~b must be {Module, Function, Args} or {Module, Function, Args, Kwargs}, got: ~0tP",
                  [I, V, 10]);
describe({window, V}) -> io_lib:format("window must be an integer from 1 to 1048576, got: ~0tP", [V, 10]);
describe({function_name, V}) -> io_lib:format("a function name must be an atom or a non-empty binary, got: ~0tP", [V, 10]);
describe({callback, V}) -> io_lib:format("a callback must be a fun or {Module, Function}, got: ~0tP", [V, 10]);
describe({timeout, V}) ->
    io_lib:format("timeout must be infinity or an integer from 0 to 4294967295 (ms), got: ~0tP", [V, 10]);
describe(Reason) when is_binary(Reason) -> Reason;
describe(Other) -> io_lib:format("~0tP", [Other, 10]).
