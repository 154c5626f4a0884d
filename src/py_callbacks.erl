%% @doc Erlang functions that Python calls: `erlang.call(Name, *Args)' and
%% `await erlang.async_call(Name, *Args)'.
%%
%% Functions are registered by name with {@link py:register_function/2}; the registry is
%% `persistent_term' (read on every call, written rarely). A call from Python arrives here
%% as `{'$py_call', Token, Name, Args, TimeoutMs}'. A worker process runs the function and
%% answers with `py_nif:callback_reply/2', then waits for the next call: the NIF sends a
%% call straight to the most recently idle worker, and to this process (which starts a new
%% worker for it) only when none is idle. A worker idle for `callback_worker_idle_ms' (the
%% application setting, default 5000) ends; so does one that a function left with messages,
%% a process dictionary, links, monitors, a registered name or trapped exits. A call still
%% running after its timeout is answered `{error, timeout}' here, and its worker is killed.
%% The function never runs on a loop thread, so it may itself call Python (`py:call/3'), on
%% any loop, and call back into Erlang through other workers.
%%
%% Why workers wait: with a process started per call, the scheduler that ran a call often
%% slept before the next one came, and waking it cost 25-30 microseconds per call on this
%% VM; erlang.call ran at 30,000-40,000 calls/s in a third of runs instead of
%% 150,000-200,000 (docs/architecture.md). A worker that has just answered looks at its
%% mailbox for `spin_us' (the application setting) before it blocks, so a Python thread's
%% next call usually finds it, and its scheduler, awake.
-module(py_callbacks).
-behaviour(gen_server).

-export([start_link/0, register_function/2, unregister_function/1, registered/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).
%% Workers live on between calls: each call enters the current version of this module.
-export([work/2]).

-define(KEY(Name), {pybeam_function, Name}).
%% Erlang's own limit for a timer; a longer timeout means none.
-define(MAX_TIMER, 16#FFFFFFFF).
%% How long a worker waits for another call before it ends.
-define(IDLE_MS, 5000).

-type function_spec() :: fun() | {module(), atom()}.
-export_type([function_spec/0]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Registers `Fun' (called with the Python arguments) or `{M, F}' (called as
%% `apply(M, F, Args)') under `Name'.
-spec register_function(atom() | binary(), function_spec()) -> ok.
register_function(Name, Function) ->
    Key = name_key(Name),
    persistent_term:put(?KEY(Key), Function),
    ok = py_nif:register_name(Key, true).

%% @doc Removes the function registered under `Name', if any.
-spec unregister_function(atom() | binary()) -> ok.
unregister_function(Name) ->
    Key = name_key(Name),
    _ = persistent_term:erase(?KEY(Key)),
    ok = py_nif:register_name(Key, false).

%% @doc The function registered under `Name', or `undefined'.
-spec registered(atom() | binary()) -> function_spec() | undefined.
registered(Name) ->
    persistent_term:get(?KEY(name_key(Name)), undefined).

name_key(Name) when is_atom(Name) -> atom_to_binary(Name);
name_key(Name) when is_binary(Name) -> Name.

%% @private
-spec init([]) -> {ok, #{}}.
init([]) ->
    {ok, #{}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, {error, unknown_request}, map()}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_request}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({'$py_call', _Token, _Name, _Args, _TimeoutMs} = Call, State) ->
    Spin = application:get_env(pybeam, spin_us, 50),
    _ = spawn_monitor(fun() -> work(Call, Spin) end),
    {noreply, State};
handle_info({'DOWN', _Mon, process, Worker, _Reason}, State) ->
    %% A worker killed while idle leaves the idle list now, not when a call finds it dead.
    _ = py_nif:callback_worker_retire(Worker),
    {noreply, State};
handle_info({timeout, _Timer, {'$py_call_expired', Token, Worker}}, State) ->
    %% Kill the worker only if the call was still waiting: one that has answered may be
    %% running another call already.
    py_nif:callback_expire(Token) andalso exit(Worker, kill),
    {noreply, State};
handle_info(_Other, State) ->
    {noreply, State}.

%% A worker: runs a call, then waits for the next. It ends instead when its answer came
%% too late (the call timed out, and the dispatcher is about to kill it), or when the
%% function left something behind that the next call must not inherit.
%% @private
-spec work({'$py_call', non_neg_integer(), binary(), [term()], non_neg_integer()}, non_neg_integer()) -> ok.
work({'$py_call', Token, Name, Args, TimeoutMs}, Spin) ->
    case run(Token, Name, Args, TimeoutMs) =:= ok andalso clean() of
        true ->
            Ticket = py_nif:callback_worker_idle(self()),
            spin(Ticket, erlang:monotonic_time(microsecond) + Spin, Spin);
        false ->
            ok
    end.

%% Nothing in the mailbox or the process dictionary, no links, monitors, registered name
%% or trapped exits: the state a fresh process starts with.
clean() ->
    [{message_queue_len, 0}, {dictionary, []}, {links, []}, {monitors, []},
     {registered_name, []}, {trap_exit, false}]
        =:= process_info(self(), [message_queue_len, dictionary, links, monitors,
                                  registered_name, trap_exit]).

%% While it is the worker the next call goes to, it looks at its mailbox for `spin_us'
%% before it blocks: the next call is usually only microseconds away. One that another
%% worker has overtaken blocks at once; spinning several would take the schedulers that
%% run the calls.
spin(Ticket, Until, Spin) ->
    receive
        {'$py_call', _, _, _, _} = Call -> ?MODULE:work(Call, Spin)
    after 0 ->
        case erlang:monotonic_time(microsecond) < Until andalso py_nif:callback_worker_next(Ticket) of
            true ->
                erlang:yield(),
                spin(Ticket, Until, Spin);
            false ->
                wait(Spin)
        end
    end.

wait(Spin) ->
    receive
        {'$py_call', _, _, _, _} = Call -> ?MODULE:work(Call, Spin)
    after application:get_env(pybeam, callback_worker_idle_ms, ?IDLE_MS) ->
        case py_nif:callback_worker_retire(self()) of
            true ->
                ok;
            false ->
                %% A sender took this worker off the idle list just now: its call is on
                %% the way.
                receive
                    {'$py_call', _, _, _, _} = Call -> ?MODULE:work(Call, Spin)
                end
        end
    end.

run(Token, Name, Args, TimeoutMs) ->
    Timer = case TimeoutMs =< ?MAX_TIMER of
                true -> erlang:start_timer(TimeoutMs, ?MODULE, {'$py_call_expired', Token, self()});
                false -> undefined
            end,
    Reply = try apply_registered(Name, Args) of
                Value -> {ok, Value}
            catch
                throw:{py_callback_error, Reason} -> {error, Reason};
                Class:Reason -> {error, {Class, Reason}}
            end,
    Timer =:= undefined orelse erlang:cancel_timer(Timer, [{async, true}, {info, false}]),
    answer(Token, Reply).

apply_registered(Name, Args) ->
    case persistent_term:get(?KEY(Name), undefined) of
        undefined ->
            throw({py_callback_error, {unknown_function, Name}});
        {M, F} ->
            apply(M, F, Args);
        Fun when is_function(Fun, length(Args)) ->
            apply(Fun, Args);
        Fun ->
            {arity, Arity} = erlang:fun_info(Fun, arity),
            throw({py_callback_error, {badarity, Name, Arity, length(Args)}})
    end.

%% An answer with no Python form (a fun, a port) is answered with its printed form.
answer(Token, Reply) ->
    case reply(Token, Reply) of
        {error, _} ->
            Printed = {error, {unsupported_term, iolist_to_binary(io_lib:format("~0tp", [Reply]))}},
            reply(Token, Printed);
        Delivered ->
            Delivered
    end.

reply(Token, Reply) ->
    case py_nif:callback_reply(Token, Reply) of
        dirty -> py_nif:callback_reply_dirty(Token, Reply);
        Result -> Result
    end.
