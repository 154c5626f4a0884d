%% The `async' group of `make bench' (Erlang calling Python coroutines, Python calling
%% Erlang): py:async_call latency, py:async_gather throughput beside a pure-Python
%% asyncio.gather of the same coroutines on uvloop (another OS process, same run), and
%% erlang.call round trips from Python.
-module(pybeam_bench_async).

-export([group/0]).

-define(VENV, "_build/benchenv").
-define(DIR, "bench/asyncio").
-define(LATENCY_CALLS, 100000).
%% Coroutines per measurement at each batch size.
-define(GATHERED, 20000).
-define(ERLANG_CALLS, 100000).

-spec group() -> {binary(), list(), fun((list()) -> list())}.
group() ->
    Python = filename:absname(filename:join([?VENV, "bin", "python"])),
    filelib:is_regular(Python) orelse error({missing_bench_venv, Python, "run scripts/bench-env.sh"}),
    Dir = filename:absname(?DIR),
    {ok, _} = py:eval(<<"__import__('sys').path.insert(0, d) if d not in __import__('sys').path else None">>,
                      #{d => list_to_binary(Dir)}),
    ok = py:register_function(bench_echo, fun(X) -> X end),
    Script = filename:join(Dir, "async_work.py"),
    Gathers = lists:append(
                [[{measured, gather_name("py:async_gather", N), fun() -> gather(N) end},
                  {measured, gather_name("baseline: asyncio.gather on uvloop", N),
                   fun() -> external_gather(Python, Script, N) end}]
                 || N <- [10, 100, 1000]]),
    Rows = [{measured, <<"py:async_call + async_await, 100k sequential">>, fun async_latency/0},
            {measured, <<"baseline: py:call, 100k sequential">>, fun sync_latency/0}]
        ++ Gathers
        ++ [{measured, <<"erlang.call from Python, 100k sequential">>,
             fun() -> erlang_calls(erlang_calls, [?ERLANG_CALLS]) end},
            {measured, <<"erlang.call from 16 Python threads, 10k each">>,
             fun() -> erlang_calls(erlang_calls_threads, [16, ?ERLANG_CALLS div 10]) end}],
    {<<"async">>, Rows, fun targets/1}.

gather_name(What, N) ->
    iolist_to_binary(io_lib:format("~s, batch ~b (coroutines/s)", [What, N])).

async_latency() ->
    latency(fun(I) -> {ok, I} = py:async_await(py:async_call(async_work, echo, [I])) end).

sync_latency() ->
    latency(fun(I) -> {ok, I} = py:call(async_work, sync_echo, [I]) end).

latency(Call) ->
    Lats = [begin
                T0 = erlang:monotonic_time(nanosecond),
                Call(I),
                erlang:monotonic_time(nanosecond) - T0
            end || I <- lists:seq(1, ?LATENCY_CALLS)],
    Sorted = lists:sort(Lats),
    At = fun(Q) -> lists:nth(max(1, round(?LATENCY_CALLS * Q)), Sorted) / 1000 end,
    #{rate => ?LATENCY_CALLS / (lists:sum(Lats) / 1.0e9),
      p50 => At(0.50), p99 => At(0.99),
      extra => #{<<"p90_us">> => At(0.90), <<"p999_us">> => At(0.999)}}.

gather(N) ->
    Items = [{async_work, child, [I]} || I <- lists:seq(1, N)],
    Rounds = ?GATHERED div N,
    T0 = erlang:monotonic_time(nanosecond),
    [{ok, _} = py:async_gather(Items) || _ <- lists:seq(1, Rounds)],
    Seconds = (erlang:monotonic_time(nanosecond) - T0) / 1.0e9,
    per_op(?GATHERED / Seconds).

external_gather(Python, Script, N) ->
    Port = open_port({spawn_executable, Python},
                     [{args, [Script, "uvloop", "gather", integer_to_list(N),
                              integer_to_list(?GATHERED div N)]},
                      {cd, filename:dirname(Script)}, exit_status, binary, {line, 256}]),
    per_op(read_rate(Port, undefined)).

read_rate(Port, Rate) ->
    receive
        {Port, {data, {eol, <<"rate ", R/binary>>}}} -> read_rate(Port, binary_to_float(R));
        {Port, {data, _}} -> read_rate(Port, Rate);
        {Port, {exit_status, 0}} when is_float(Rate) -> Rate;
        {Port, {exit_status, Status}} -> error({gather_baseline_failed, Status})
    end.

erlang_calls(Function, Args) ->
    {ok, Rate} = py:call(async_work, Function, Args, #{}, #{timeout => infinity}),
    per_op(Rate).

%% A throughput: p50 = p99 = the mean time per operation, as for `batch' workloads.
per_op(Rate) ->
    #{rate => Rate, p50 => 1.0e6 / Rate, p99 => 1.0e6 / Rate}.

targets(M) ->
    Row = fun(Name) -> hd([R || #{<<"name">> := N} = R <- M, N =:= Name]) end,
    Async = Row(<<"py:async_call + async_await, 100k sequential">>),
    Gather = maps:get(<<"rate">>, Row(gather_name("py:async_gather", 1000))),
    Uvloop = maps:get(<<"rate">>, Row(gather_name("baseline: asyncio.gather on uvloop", 1000))),
    Calls = maps:get(<<"rate">>, Row(<<"erlang.call from Python, 100k sequential">>)),
    [at_most("async_call p50 <= 20 us", maps:get(<<"p50_us">>, Async), 20.0),
     at_most("async_call p99 <= 60 us", maps:get(<<"p99_us">>, Async), 60.0),
     at_least("async_gather batch 1000 >= 1.0x uvloop gather (ratio)", Gather / Uvloop, 1.0),
     at_least("erlang.call >= 100,000 calls/s", Calls, 100000)].

at_least(What, Measured, Goal) ->
    #{<<"target">> => list_to_binary(What), <<"measured">> => Measured * 1.0,
      <<"goal">> => Goal, <<"met">> => Measured >= Goal}.

at_most(What, Measured, Goal) ->
    #{<<"target">> => list_to_binary(What), <<"measured">> => Measured * 1.0,
      <<"goal">> => Goal, <<"met">> => Measured =< Goal}.
