%% Helpers shared by the Common Test suites.
-module(py_test_util).

-include_lib("stdlib/include/assert.hrl").

-export([wait_until/1, wait_until/2]).

%% @doc Polls `Pred' every 10 ms until it holds; fails the case if it still does not
%% after 5 s. Tests wait for what they observe, never for a fixed sleep, so that a slow
%% or loaded machine makes them slower, not wrong.
-spec wait_until(fun(() -> boolean())) -> ok.
wait_until(Pred) ->
    wait_until(Pred, 5000).

%% @doc As {@link wait_until/1}, with the limit `Ms' in milliseconds.
-spec wait_until(fun(() -> boolean()), integer()) -> ok.
wait_until(Pred, Ms) when Ms =< 0 ->
    ?assert(Pred()),
    ok;
wait_until(Pred, Ms) ->
    case Pred() of
        true -> ok;
        false -> timer:sleep(10), wait_until(Pred, Ms - 10)
    end.
