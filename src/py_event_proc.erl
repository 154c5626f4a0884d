%% @doc The event process: one per loop, and the loop's only router.
%%
%% It owns the native loop (its Rust thread is torn down when this process dies) and
%% routes every result the thread sends. Sync results arrive as one message per batch,
%% `{'$py_replies', [{Alias, Result}]}', and each is forwarded to `Alias'. The alias is
%% the caller's monitor of this process, so a caller that timed out (and demonitored)
%% never receives a late result, and nothing is stored here per call.
%%
%% This is a hand-written receive loop rather than a gen_server because every result of
%% the loop passes through it; it still answers `sys' messages and `gen:call' requests.
-module(py_event_proc).

-export([start_link/1, start/1, handle/1, info/1, stop/1]).
-export([init/3]).
-export([system_continue/3, system_terminate/4, system_code_change/4, system_get_state/1]).

-record(state, {
    loop :: py_nif:loop(),
    parent :: pid() | undefined
}).

-type opts() :: #{default_index => pos_integer(),
                  max_batch => pos_integer(),
                  capacity => pos_integer(),
                  spin_us => non_neg_integer()}.
-export_type([opts/0]).

%% @doc Starts an event process and its native loop, linked to the caller (a supervisor).
-spec start_link(opts()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    proc_lib:start_link(?MODULE, init, [self(), Opts, linked]).

%% @doc Starts an unlinked event process and its native loop.
-spec start(opts()) -> {ok, pid()} | {error, term()}.
start(Opts) ->
    proc_lib:start(?MODULE, init, [self(), Opts, unlinked]).

%% @doc The `{Loop, EventProc}' handle that `py:call/5' accepts as its `loop' option.
-spec handle(pid()) -> py_loops:handle() | {error, {event_loop_down, term()}}.
handle(EventProc) ->
    gen_call(EventProc, handle).

%% @doc Counters of the loop: requests queued and running on its thread, completed
%% requests, batches, and this process's mailbox length.
-spec info(pid()) -> map() | {error, {event_loop_down, term()}}.
info(EventProc) ->
    gen_call(EventProc, info).

%% @doc Stops the event process; its loop thread finishes its batch and exits.
-spec stop(pid()) -> ok | {error, {event_loop_down, term()}}.
stop(EventProc) ->
    gen_call(EventProc, stop).

gen_call(EventProc, Request) ->
    try gen:call(EventProc, '$py_event', Request, 5000) of
        {ok, Reply} -> Reply
    catch
        exit:{Reason, _} -> {error, {event_loop_down, Reason}}
    end.

%% @private
-spec init(pid(), opts(), linked | unlinked) -> no_return().
init(Starter, Opts, Link) ->
    process_flag(message_queue_data, off_heap),
    process_flag(trap_exit, true),
    LoopOpts = maps:merge(#{max_batch => application:get_env(pybeam, max_batch, 128),
                            capacity => application:get_env(pybeam, queue_capacity, 20000),
                            spin_us => application:get_env(pybeam, spin_us, 50),
                            index => maps:get(default_index, Opts, 0)},
                          maps:without([default_index], Opts)),
    case py_nif:loop_new(self(), LoopOpts) of
        {ok, Loop} ->
            case Opts of
                #{default_index := I} -> py_loops:register_default(I, Loop, self());
                _ -> ok
            end,
            Parent = case Link of linked -> Starter; unlinked -> undefined end,
            proc_lib:init_ack(Starter, {ok, self()}),
            loop(#state{loop = Loop, parent = Parent});
        {error, Reason} ->
            proc_lib:init_ack(Starter, {error, Reason}),
            exit(normal)
    end.

loop(S) ->
    receive
        {'$py_replies', Replies} ->
            route(Replies),
            loop(S);
        {'$py_replies_collect', Replies} ->
            %% Large binaries passed through: drop our references to them now.
            route(Replies),
            erlang:garbage_collect(),
            loop(S);
        {'$py_event', From, Request} ->
            handle_request(Request, From, S);
        {'$py_loop_exit', Why} ->
            loop_exited(Why, S);
        {system, From, Msg} ->
            sys:handle_system_msg(Msg, From, S#state.parent, ?MODULE, [], S);
        {'EXIT', Parent, Reason} when Parent =:= S#state.parent ->
            terminate(Reason, S);
        _Unexpected ->
            loop(S)
    end.

route([{To, Result} | Rest]) ->
    To ! {To, Result},
    route(Rest);
route([]) ->
    ok.

handle_request(info, From, S) ->
    {message_queue_len, Len} = process_info(self(), message_queue_len),
    Stats = py_nif:loop_stats(S#state.loop),
    gen:reply(From, Stats#{mailbox => Len,
                          pending => maps:get(queued, Stats) + maps:get(running, Stats)}),
    loop(S);
handle_request(handle, From, S) ->
    gen:reply(From, {S#state.loop, self()}),
    loop(S);
handle_request(stop, From, S) ->
    gen:reply(From, ok),
    terminate(normal, S);
handle_request(_Unknown, From, S) ->
    gen:reply(From, {error, unknown_request}),
    loop(S).

%% The loop thread ended without being asked to (this process closes the loop only on its
%% way out): it goes down with it, so that callers and the supervisor learn of it.
-spec loop_exited(normal | {crash, binary()}, #state{}) -> no_return().
loop_exited(normal, S) ->
    terminate(loop_thread_stopped, S);
loop_exited({crash, Msg}, S) ->
    terminate({loop_thread_crashed, Msg}, S).

-spec terminate(term(), #state{}) -> no_return().
terminate(Reason, S) ->
    py_nif:loop_close(S#state.loop),
    exit(Reason).

%% @private
-spec system_continue(pid() | undefined, [sys:dbg_opt()], #state{}) -> no_return().
system_continue(_Parent, _Debug, S) ->
    loop(S).

%% @private
-spec system_terminate(term(), pid() | undefined, [sys:dbg_opt()], #state{}) -> no_return().
system_terminate(Reason, _Parent, _Debug, S) ->
    terminate(Reason, S).

%% @private
-spec system_code_change(#state{}, module(), term(), term()) -> {ok, #state{}}.
system_code_change(S, _Module, _OldVsn, _Extra) ->
    {ok, S}.

%% @private
-spec system_get_state(#state{}) -> {ok, #state{}}.
system_get_state(S) ->
    {ok, S}.
