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
               | {internal_error, binary()}.
-export_type([name/0, code/0, call_opts/0, python_error/0, error/0]).

-define(DEFAULT_TIMEOUT, 30000).
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
%% milliseconds (default 30000; on expiry the Python code is interrupted and the caller
%% gets `{error, timeout}'), and `loop', an explicit loop `{LoopRef, EventProc}' or any
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
    case maps:get(timeout, Opts, ?DEFAULT_TIMEOUT) of
        T when T =:= infinity; is_integer(T), T >= 0 ->
            {ok, T, maps:get(loop, Opts, default)};
        T ->
            {badarg, {timeout, T}}
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
describe({timeout, V}) ->
    io_lib:format("timeout must be a non-negative integer or infinity, got: ~0tP", [V, 10]);
describe(Reason) when is_binary(Reason) -> Reason;
describe(Other) -> io_lib:format("~0tP", [Other, 10]).
