%% Helpers shared by the Common Test suites.
-module(py_test_util).

-include_lib("stdlib/include/assert.hrl").

-export([wait_until/1, wait_until/2, wait_equal/3, open_fds/0, rss_mb/0]).

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

%% @doc Polls `Fun' every 10 ms until it returns `Expected'; after `Ms' milliseconds the
%% case fails with both values, which a boolean predicate could not show.
-spec wait_equal(term(), fun(() -> term()), integer()) -> ok.
wait_equal(Expected, Fun, Ms) ->
    case Fun() of
        Expected -> ok;
        _ when Ms =< 0 -> ?assertEqual(Expected, Fun()), ok;
        _ -> timer:sleep(10), wait_equal(Expected, Fun, Ms - 10)
    end.

%% @doc How many fds this OS process has open.
-spec open_fds() -> non_neg_integer().
open_fds() ->
    {ok, Fds} = file:list_dir("/proc/self/fd"),
    length(Fds).

%% @doc This OS process's resident set size, in MB.
-spec rss_mb() -> non_neg_integer().
rss_mb() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [_, Rest] = binary:split(Status, <<"VmRSS:">>),
    [Kb | _] = string:lexemes(Rest, " \t\n"),
    binary_to_integer(Kb) div 1024.
