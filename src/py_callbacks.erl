%% @doc Erlang functions that Python calls: `erlang.call(Name, *Args)' and
%% `await erlang.async_call(Name, *Args)'.
%%
%% Functions are registered by name with {@link py:register_function/2}; the registry is
%% `persistent_term' (read on every call, written rarely). A call from Python arrives here
%% as `{'$py_call', Token, Name, Args, TimeoutMs}'; this process starts a process for it,
%% which runs the function and answers with `py_nif:callback_reply/2'. A call still running
%% after its timeout is killed and answered `{error, timeout}'. The function never runs on
%% a loop thread, so it may itself call Python (`py:call/3'), on any loop.
-module(py_callbacks).
-behaviour(gen_server).

-export([start_link/0, register_function/2, unregister_function/1, registered/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(KEY(Name), {pybeam_function, Name}).
%% Erlang's own limit for a timer; a longer timeout means none.
-define(MAX_TIMER, 16#FFFFFFFF).

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
handle_info({'$py_call', Token, Name, Args, TimeoutMs}, State) ->
    Self = self(),
    _ = spawn(fun() -> run(Self, Token, Name, Args, TimeoutMs) end),
    {noreply, State};
handle_info({timeout, _Timer, {'$py_call_expired', Token, Pid}}, State) ->
    exit(Pid, kill),
    answer(Token, {error, timeout}),
    {noreply, State};
handle_info(_Other, State) ->
    {noreply, State}.

run(Dispatcher, Token, Name, Args, TimeoutMs) ->
    Timer = case TimeoutMs =< ?MAX_TIMER of
                true -> erlang:start_timer(TimeoutMs, Dispatcher, {'$py_call_expired', Token, self()});
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
        ok ->
            ok;
        {error, _} ->
            Printed = {error, {unsupported_term, iolist_to_binary(io_lib:format("~0tp", [Reply]))}},
            ok = reply(Token, Printed)
    end.

reply(Token, Reply) ->
    case py_nif:callback_reply(Token, Reply) of
        dirty -> py_nif:callback_reply_dirty(Token, Reply);
        Result -> Result
    end.
