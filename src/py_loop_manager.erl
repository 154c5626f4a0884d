%% @doc Makes event processes for event loops created by Python code
%% (`erlang.new_event_loop()'). The Python thread sends `{'$py_new_loop', Token}' and waits;
%% the event process started here creates its native loop with that token, which hands the
%% loop to the waiting thread. A loop that cannot be made is reported back with its reason.
%%
%% It also owns `py_streams', the table that maps the reference of each running
%% `py:async_stream/5' to its event process, so that `py:async_cancel/1' can find it.
-module(py_loop_manager).
-behaviour(gen_server).

-export([start_link/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @private
-spec init([]) -> {ok, #{}}.
init([]) ->
    _ = ets:new(py_streams, [named_table, public, set, {write_concurrency, true}]),
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
handle_info({'$py_new_loop', Token}, State) ->
    case supervisor:start_child(py_loop_sup, [#{thread => false, token => Token}]) of
        {ok, _EventProc} ->
            ok;
        {error, Reason} ->
            py_nif:link_failed(Token, unicode:characters_to_binary(io_lib:format("~0p", [Reason])))
    end,
    {noreply, State};
handle_info(_Other, State) ->
    {noreply, State}.
