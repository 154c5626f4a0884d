%% @doc Event loops driven from Erlang.
%%
%% A loop is a native loop (its own Python thread and request queue) plus its event
%% process, which owns the loop's timers, fd readiness, child processes, sockets and call
%% results, and queues them as events until a process takes them with {@link poll/2}.
%%
%% Events, in arrival order:
%% ```
%% {Id, timer}                       a timer started with start_timer/3 fired
%% {Id, read} | {Id, write}          a watched fd is ready (re-armed once polled)
%% {Id, call_result, Value}          a call submitted with call/7 returned
%% {Id, call_error, Reason}          ... or failed (Reason as in py:call/5)
%% {Id, async_result, Value}         an async call submitted with async_call/7 finished
%% {Id, async_error, Reason}         ... or failed
%% {Id, subprocess_stdout, Data}     output of a child started with spawn/4
%% {Id, subprocess_stderr, Data}
%% {Id, subprocess_exit, ReturnCode} after its last output; minus the signal if killed
%% {Id, socket_data, Data}           a socket handed over with watch_socket/3
%% {Id, socket_data, {Ip, Port, Data}}   (UDP)
%% {Id, socket_closed, closed}
%% {Id, socket_error, Reason}
%% '''
%% `Id' is a callback id, normally from {@link py_callback_id:next/0}. docs/event-loop.md
%% has the protocol, the ownership rules and a worked example.
-module(py_event_loop_v2).

-export([new/0, new/1, destroy/2, poll/2]).
-export([start_timer/3, cancel_timer/2]).
-export([add_reader/3, add_writer/3, remove_reader/2, remove_writer/2]).
-export([call/6, call/7, call_many/3, async_call/6, async_call/7]).
-export([spawn/4, kill/3, watch_socket/3, info/1]).
-export([format_error/2]).

-type loop_ref() :: py_nif:loop().
-type callback_id() :: pos_integer().
-type event() :: {callback_id(), timer | read | write}
               | {callback_id(), atom(), term()}.
%% Opaque: it carries the timer's deadline, so that cancelling it needs no lookup.
-opaque timer_ref() :: {integer(), callback_id(), reference()}.
-type new_opts() :: #{owner => pid(), max_batch => pos_integer(),
                      capacity => pos_integer(), spin_us => non_neg_integer()}.
-export_type([loop_ref/0, callback_id/0, event/0, timer_ref/0]).

%% Options that size the native loop, checked here so that a bad value is a badarg.
-define(SIZE_OPTS, [max_batch, capacity, spin_us, max_tasks]).
%% The longest finite delay or timeout, as for `receive ... after' and gen_server:call/3.
-define(MAX_DELAY, 16#FFFFFFFF).
-define(BADARG(Cause, Args),
        erlang:error(badarg, Args, [{error_info, #{module => ?MODULE, cause => Cause}}])).

%% @equiv new(#{})
-spec new() -> {ok, loop_ref(), pid()} | {error, term()}.
new() ->
    new(#{}).

%% @doc Creates a loop: a native loop with its own thread, and its event process.
%%
%% The loop belongs to `owner' (default: the caller): it is destroyed when the owner
%% exits. Other options size the native loop as the application environment does; a bad
%% value (`spin_us' not a non-negative integer, the others not positive integers) is a
%% `badarg' with cause `{Key, Value}'.
-spec new(new_opts()) -> {ok, loop_ref(), pid()} | {error, term()}.
new(Opts) when is_map(Opts) ->
    Owner = maps:get(owner, Opts, self()),
    is_pid(Owner) orelse ?BADARG({owner, Owner}, [Opts]),
    case lists:search(fun({Key, Value}) -> not valid_size(Key, Value) end,
                      maps:to_list(maps:with(?SIZE_OPTS, Opts))) of
        {value, Bad} -> ?BADARG(Bad, [Opts]);
        false -> ok
    end,
    case supervisor:start_child(py_loop_sup, [Opts#{owner => Owner}]) of
        {ok, EventProc} ->
            {Loop, EventProc} = py_event_proc:handle(EventProc),
            {ok, Loop, EventProc};
        {error, {noproc, _}} ->
            {error, not_started};
        {error, _} = Error ->
            Error
    end;
new(Opts) ->
    ?BADARG({opts, Opts}, [Opts]).

valid_size(spin_us, V) -> is_integer(V) andalso V >= 0;
valid_size(_Key, V) -> is_integer(V) andalso V > 0.

%% @doc Destroys a loop. Waiters blocked in {@link poll/2} get `[]'; watched fds are
%% released (never closed: they are the caller's); children are killed; handed-over
%% sockets are closed; the loop's thread exits after its current batch. It returns once
%% all of that is done, so another loop can watch the same fds at once.
-spec destroy(loop_ref(), pid()) -> ok | {error, loop_destroyed}.
destroy(Loop, EventProc) when is_reference(Loop), is_pid(EventProc) ->
    case py_event_proc:call(EventProc, {destroy, Loop}) of
        {badarg, Why} -> ?BADARG(Why, [Loop, EventProc]);
        Result -> Result
    end;
destroy(Loop, EventProc) ->
    ?BADARG({loop, {Loop, EventProc}}, [Loop, EventProc]).

%% @doc All queued events, in arrival order. Returns at once if any are queued; otherwise
%% waits up to `Timeout' ms (or `infinity') for the next ones and returns `[]' on timeout.
%% `0' never waits. A poller that dies while waiting is forgotten.
-spec poll(pid(), timeout()) -> [event()] | {error, term()}.
poll(EventProc, Timeout) when is_pid(EventProc) ->
    case py_event_proc:valid_timeout(Timeout) of
        true -> py_event_proc:call(EventProc, {poll, Timeout});
        false -> ?BADARG({timeout, Timeout}, [EventProc, Timeout])
    end;
poll(EventProc, Timeout) ->
    ?BADARG({event_proc, EventProc}, [EventProc, Timeout]).

%% @doc Starts a timer: `{CallbackId, timer}' is queued after `DelayMs' milliseconds,
%% never earlier. Costs one message to the event process and no reply.
-spec start_timer(pid(), non_neg_integer(), callback_id()) -> timer_ref() | {error, loop_destroyed}.
start_timer(EventProc, DelayMs, Id) when is_pid(EventProc), is_integer(DelayMs),
                                         DelayMs >= 0, DelayMs =< ?MAX_DELAY,
                                         is_integer(Id), Id > 0 ->
    case is_process_alive(EventProc) of
        true ->
            {Deadline, Ref} = {deadline(DelayMs), make_ref()},
            EventProc ! {'$py_start_timer', Deadline, Id, Ref},
            {Deadline, Id, Ref};
        false ->
            {error, loop_destroyed}
    end;
start_timer(EventProc, DelayMs, Id) ->
    Args = [EventProc, DelayMs, Id],
    if
        not is_pid(EventProc) -> ?BADARG({event_proc, EventProc}, Args);
        not is_integer(DelayMs) -> ?BADARG({delay, DelayMs}, Args);
        DelayMs < 0 -> ?BADARG({delay, DelayMs}, Args);
        DelayMs > ?MAX_DELAY -> ?BADARG({delay_too_long, DelayMs}, Args);
        true -> ?BADARG({callback_id, Id}, Args)
    end.

%% The absolute deadline in monotonic ms, rounded up so that the timer cannot fire early;
%% 0 means "now".
deadline(0) ->
    0;
deadline(DelayMs) ->
    (erlang:monotonic_time(microsecond) + DelayMs * 1000 + 999) div 1000.

%% @doc Cancels a timer. Once this returns, its event is never delivered, even if the
%% timer already fired and its event is waiting in the queue.
-spec cancel_timer(pid(), timer_ref()) -> ok | {error, loop_destroyed}.
cancel_timer(EventProc, {Deadline, Id, Ref}) when is_pid(EventProc), is_integer(Deadline),
                                                  is_reference(Ref) ->
    case is_process_alive(EventProc) of
        true -> EventProc ! {'$py_cancel_timer', Deadline, Id, Ref}, ok;
        false -> {error, loop_destroyed}
    end;
cancel_timer(EventProc, TRef) ->
    ?BADARG({timer, {EventProc, TRef}}, [EventProc, TRef]).

%% @doc Queues `{CallbackId, read}' whenever `Fd' is readable (checked again each time
%% the event is polled). The fd stays the caller's: it is never closed here.
-spec add_reader(pid(), integer(), callback_id()) ->
    ok | {error, badfd | already_registered | loop_destroyed}.
add_reader(EventProc, Fd, Id) ->
    add_fd(EventProc, Fd, read, Id, [EventProc, Fd, Id]).

%% @doc Queues `{CallbackId, write}' whenever `Fd' is writable.
-spec add_writer(pid(), integer(), callback_id()) ->
    ok | {error, badfd | already_registered | loop_destroyed}.
add_writer(EventProc, Fd, Id) ->
    add_fd(EventProc, Fd, write, Id, [EventProc, Fd, Id]).

add_fd(EventProc, Fd, Dir, Id, Args) ->
    check_fd_args(EventProc, Fd, Args),
    (is_integer(Id) andalso Id > 0) orelse ?BADARG({callback_id, Id}, Args),
    case Fd < 0 of
        true -> {error, badfd};
        false -> py_event_proc:call(EventProc, {add_fd, Fd, Dir, Id})
    end.

%% @doc Stops watching `Fd' for reading; a queued read event for it is dropped.
-spec remove_reader(pid(), integer()) -> ok | {error, not_registered | loop_destroyed}.
remove_reader(EventProc, Fd) ->
    check_fd_args(EventProc, Fd, [EventProc, Fd]),
    py_event_proc:call(EventProc, {remove_fd, Fd, read}).

%% @doc Stops watching `Fd' for writing; a queued write event for it is dropped.
-spec remove_writer(pid(), integer()) -> ok | {error, not_registered | loop_destroyed}.
remove_writer(EventProc, Fd) ->
    check_fd_args(EventProc, Fd, [EventProc, Fd]),
    py_event_proc:call(EventProc, {remove_fd, Fd, write}).

check_fd_args(EventProc, Fd, Args) ->
    is_pid(EventProc) orelse ?BADARG({event_proc, EventProc}, Args),
    is_integer(Fd) orelse ?BADARG({fd, Fd}, Args),
    ok.

%% @equiv call(Loop, EventProc, Id, Module, Function, Args, #{})
-spec call(loop_ref(), pid(), callback_id(), py:name(), py:name(), list()) ->
    ok | {error, term()}.
call(Loop, EventProc, Id, Module, Function, Args) ->
    call(Loop, EventProc, Id, Module, Function, Args, #{}).

%% @doc Submits `Module.Function(*Args, **Kwargs)' on the loop without waiting: its result
%% is queued as `{Id, call_result, Value}' or `{Id, call_error, Reason}'.
-spec call(loop_ref(), pid(), callback_id(), py:name(), py:name(), list(), map()) ->
    ok | {error, term()}.
call(Loop, EventProc, Id, Module, Function, Args, Kwargs) ->
    submit_event(call, [Loop, EventProc, Id, Module, Function, Args, Kwargs]).

%% @equiv async_call(Loop, EventProc, Id, Module, Function, Args, #{})
-spec async_call(loop_ref(), pid(), callback_id(), py:name(), py:name(), list()) ->
    ok | {error, term()}.
async_call(Loop, EventProc, Id, Module, Function, Args) ->
    async_call(Loop, EventProc, Id, Module, Function, Args, #{}).

%% @doc Runs `Module.Function(*Args, **Kwargs)' on the loop's asyncio loop without waiting:
%% a coroutine function (or one returning an awaitable) runs as a task, concurrently with
%% others; a plain function's value is the result. The result is queued as
%% `{Id, async_result, Value}' or `{Id, async_error, Reason}'.
-spec async_call(loop_ref(), pid(), callback_id(), py:name(), py:name(), list(), map()) ->
    ok | {error, term()}.
async_call(Loop, EventProc, Id, Module, Function, Args, Kwargs) ->
    submit_event(async, [Loop, EventProc, Id, Module, Function, Args, Kwargs]).

submit_event(Kind, [Loop, EventProc, Id, Module, Function, Args, Kwargs] = Argv) ->
    is_reference(Loop) andalso is_pid(EventProc) orelse ?BADARG({loop, {Loop, EventProc}}, Argv),
    is_integer(Id) andalso Id > 0 orelse ?BADARG({callback_id, Id}, Argv),
    is_atom(Module) orelse is_binary(Module) orelse ?BADARG({module, Module}, Argv),
    is_atom(Function) orelse is_binary(Function) orelse ?BADARG({function, Function}, Argv),
    is_list(Args) orelse ?BADARG({args, Args}, Argv),
    is_map(Kwargs) orelse ?BADARG({kwargs, Kwargs}, Argv),
    Job = {Kind, Module, Function, Args, Kwargs},
    Submitted = case py_nif:submit(Loop, Id, event, Job) of
                    dirty -> py_nif:submit_dirty(Loop, Id, event, Job);
                    Other -> Other
                end,
    case Submitted of
        {badarg, Why} -> ?BADARG(Why, Argv);
        Result -> Result
    end.

%% @doc Submits many calls in one NIF call: all are queued, in order, or none
%% (`{error, overloaded}'). Each result becomes a `call_result' or `call_error' event.
%% Each call is `{Id, Module, Function, Args}' or `{Id, Module, Function, Args, Kwargs}'.
-spec call_many(loop_ref(), pid(), [{callback_id(), py:name(), py:name(), list()}
                                   | {callback_id(), py:name(), py:name(), list(), map()}]) ->
    ok | {error, term()}.
call_many(Loop, EventProc, Calls) when is_reference(Loop), is_pid(EventProc), is_list(Calls) ->
    Requests = call_requests(Calls, 1, [Loop, EventProc, Calls]),
    Submitted = case py_nif:submit_many(Loop, Requests) of
                    dirty -> py_nif:submit_many_dirty(Loop, Requests);
                    Other -> Other
                end,
    case Submitted of
        {badarg, Why} -> ?BADARG(Why, [Loop, EventProc, Calls]);
        Result -> Result
    end;
call_many(Loop, EventProc, Calls) ->
    ?BADARG({call_many, {Loop, EventProc, Calls}}, [Loop, EventProc, Calls]).

call_requests([Call | Rest], Index, Argv) ->
    [call_request(Call, Index, Argv) | call_requests(Rest, Index + 1, Argv)];
call_requests([], _Index, _Argv) ->
    [];
call_requests(_ImproperTail, _Index, Argv) ->
    ?BADARG({calls, improper_list}, Argv).

call_request({Id, M, F, A}, Index, Argv) ->
    call_request({Id, M, F, A, #{}}, Index, Argv);
call_request({Id, M, F, A, K}, _Index, _Argv)
  when is_integer(Id), Id > 0, (is_atom(M) orelse is_binary(M)), (is_atom(F) orelse is_binary(F)),
       is_list(A), is_map(K) ->
    {Id, event, {call, M, F, A, K}};
call_request(Call, Index, Argv) ->
    ?BADARG({bad_call, Index, Call}, Argv).

%% @doc Starts a child process owned by the loop. Its output and exit become
%% `subprocess_stdout', `subprocess_stderr' and `subprocess_exit' events (the exit after
%% the last output). `Argv' is `[Program | Args]'; the program is looked up in `PATH'.
%% Options: `stdin' (`null', default, or `{data, iodata()}': written, then closed),
%% `stderr' (`pipe', default, `stdout' or `null'), `cwd', `env' (`[<<"NAME=value">>]').
-spec spawn(pid(), callback_id(), [iodata()], map()) -> {ok, integer()} | {error, term()}.
spawn(EventProc, Id, Argv, Opts) ->
    Args = [EventProc, Id, Argv, Opts],
    is_pid(EventProc) orelse ?BADARG({event_proc, EventProc}, Args),
    is_integer(Id) andalso Id > 0 orelse ?BADARG({callback_id, Id}, Args),
    is_list(Argv) andalso Argv =/= [] orelse ?BADARG({argv, Argv}, Args),
    is_map(Opts) orelse ?BADARG({opts, Opts}, Args),
    case py_event_proc:call(EventProc, {spawn, Id, Argv, Opts}) of
        {badarg, Why} -> ?BADARG(Why, Args);
        Result -> Result
    end.

%% @doc Sends `Signal' (a number) to the child started for `Id'.
-spec kill(pid(), callback_id(), pos_integer()) -> ok | {error, term()}.
kill(EventProc, Id, Signal) when is_pid(EventProc), is_integer(Signal), Signal > 0 ->
    py_event_proc:call(EventProc, {kill, Id, Signal});
kill(EventProc, Id, Signal) ->
    ?BADARG({kill, Signal}, [EventProc, Id, Signal]).

%% @doc Hands a `gen_tcp' or `gen_udp' socket to the loop: the caller must be its
%% controlling process. From now on its messages become `socket_*' events for `Id', and the
%% socket is closed when the loop is destroyed.
-spec watch_socket(pid(), port(), callback_id()) -> ok | {error, term()}.
watch_socket(EventProc, Socket, Id) when is_pid(EventProc), is_port(Socket), is_integer(Id), Id > 0 ->
    Transfer = case erlang:port_info(Socket, name) of
                   {name, "udp_inet"} -> fun gen_udp:controlling_process/2;
                   _ -> fun gen_tcp:controlling_process/2
               end,
    case inet:setopts(Socket, [{active, false}]) of
        ok ->
            case Transfer(Socket, EventProc) of
                ok -> py_event_proc:call(EventProc, {watch_socket, Socket, Id});
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end;
watch_socket(EventProc, Socket, Id) ->
    ?BADARG({watch_socket, {EventProc, Socket, Id}}, [EventProc, Socket, Id]).

%% @doc The loop's counters (see {@link py_event_proc:info/1}).
-spec info(pid()) -> map() | {error, term()}.
info(EventProc) when is_pid(EventProc) ->
    py_event_proc:info(EventProc);
info(EventProc) ->
    ?BADARG({event_proc, EventProc}, [EventProc]).

%% @private Readable reasons for `badarg', shown by `erl_error' and the shell.
-spec format_error(term(), erlang:stacktrace()) -> #{general => binary()}.
format_error(badarg, [{_M, _F, _Args, Info} | _]) ->
    Cause = maps:get(cause, proplists:get_value(error_info, Info, #{}), undefined),
    #{general => unicode:characters_to_binary(describe(Cause))};
format_error(_, _) ->
    #{}.

describe({spin_us, V}) -> io_lib:format("spin_us must be a non-negative integer (microseconds), got: ~0tP", [V, 10]);
describe({Key, V}) when Key =:= max_batch; Key =:= capacity; Key =:= max_tasks ->
    io_lib:format("~s must be a positive integer, got: ~0tP", [Key, V, 10]);
describe({delay, V}) -> io_lib:format("the delay must be a non-negative integer (ms), got: ~0tP", [V, 10]);
describe({delay_too_long, V}) -> io_lib:format("the delay may be at most ~b ms, got: ~b", [?MAX_DELAY, V]);
describe({callback_id, V}) -> io_lib:format("a callback id must be a positive integer, got: ~0tP", [V, 10]);
describe({timeout, V}) ->
    io_lib:format("the timeout must be infinity or an integer from 0 to ~b (ms), got: ~0tP", [?MAX_DELAY, V, 10]);
describe({fd, V}) -> io_lib:format("an fd must be an integer, got: ~0tP", [V, 10]);
describe({event_proc, V}) -> io_lib:format("not an event process: ~0tP", [V, 10]);
describe(not_this_loop) -> "the loop reference does not belong to this event process";
describe({bad_call, I, C}) ->
    io_lib:format("call ~b must be {Id, Module, Function, Args[, Kwargs]} with a positive "
                  "integer id, got: ~0tP", [I, C, 10]);
describe(Reason) when is_binary(Reason) -> Reason;
describe(Other) -> io_lib:format("~0tP", [Other, 10]).
