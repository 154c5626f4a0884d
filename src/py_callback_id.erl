%% @doc The callback-id counter: one `atomics' array kept in `persistent_term', so that
%% taking an id costs no message and ids stay unique across loops and loop restarts
%% (the counter outlives both; it is created once per node).
-module(py_callback_id).

-export([ensure/0, next/0, next/1]).

-define(KEY, {pybeam, callback_ids}).

%% @doc Creates the counter if this node has none. Called from the application start,
%% which runs once at a time.
-spec ensure() -> ok.
ensure() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> persistent_term:put(?KEY, atomics:new(1, [{signed, false}]));
        _ -> ok
    end.

%% @doc A fresh id: positive, unique on this node, increasing.
-spec next() -> pos_integer().
next() ->
    atomics:add_get(persistent_term:get(?KEY), 1, 1).

%% @doc The last of `N' fresh consecutive ids (the first is the result minus `N' plus 1).
-spec next(pos_integer()) -> pos_integer().
next(N) when is_integer(N), N > 0 ->
    atomics:add_get(persistent_term:get(?KEY), 1, N).
