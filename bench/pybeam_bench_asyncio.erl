%% The `asyncio' group of `make bench': the same Python workloads (bench/asyncio/workloads.py)
%% on erlang.ErlangEventLoop inside this BEAM, and, as baselines measured in the same run,
%% on asyncio's default loop (with glibc's default malloc and with a raised mmap threshold)
%% and on uvloop, each measurement in a fresh OS process of the bench venv's Python.
-module(pybeam_bench_asyncio).

-export([group/0]).

-define(VENV, "_build/benchenv").
-define(DIR, "bench/asyncio").
%% asyncio's socket transports recv into a fresh 256 KiB buffer per read; above the default
%% 128 KiB threshold glibc serves each one with mmap, mremap and munmap. 1 MiB keeps them on
%% the heap.
-define(TUNED_MALLOC, "glibc.malloc.mmap_threshold=1048576").
%% Not a loop: the same echo in plain Erlang, over the `socket' module, whose readiness
%% comes through enif_select and the BEAM's poller as ours does; no Python at all.
-define(BEAM_ECHO, "reference: Erlang socket echo, no Python").

%% {Key, label}: Key names the loop in workloads.py, or the external variant.
loops() ->
    [{erlang, "ErlangEventLoop"},
     {asyncio, "baseline asyncio"},
     {asyncio_tuned, "baseline asyncio, mmap 1 MiB"},
     {uvloop, "baseline uvloop"}].

workloads() ->
    [{call_soon, "call_soon 1M no-op"},
     {timers, "timers 10k over 0-100 ms"},
     {gather, "gather 10k coroutines"},
     {tcp_echo_1, "TCP echo 1 conn x 100k"},
     {tcp_echo_100, "TCP echo 100 conn x 1k"},
     {udp_echo, "UDP echo 100k"},
     {subprocess, "spawn+wait 200 /bin/true"}].

-spec group() -> {binary(), list(), fun((list()) -> list())}.
group() ->
    Python = filename:absname(filename:join([?VENV, "bin", "python"])),
    case filelib:is_regular(Python) of
        true -> ok;
        false -> error({missing_bench_venv, Python, "run scripts/bench-env.sh"})
    end,
    Dir = filename:absname(?DIR),
    ok = py:exec(iolist_to_binary(
                   ["import sys\n",
                    "if ", py_str(Dir), " not in sys.path: sys.path.insert(0, ", py_str(Dir), ")\n"])),
    %% A loop of its own: each embedded measurement blocks the loop it runs on for seconds.
    {ok, Loop, EP} = py_event_loop_v2:new(),
    Script = filename:join(Dir, "workloads.py"),
    Rows = [{measured, name(WLabel, LLabel),
             fun() -> measure(L, W, {Python, Script}, {Loop, EP}) end}
            || {W, WLabel} <- workloads(), {L, LLabel} <- loops()]
        ++ [{measured, name(WLabel, ?BEAM_ECHO), fun() -> beam_echo(Conns, Rounds) end}
            || {W, Conns, Rounds} <- [{tcp_echo_1, 1, 100000}, {tcp_echo_100, 100, 1000}],
               {W1, WLabel} <- workloads(), W1 =:= W],
    {<<"asyncio">>, Rows, fun targets/1}.

name(Workload, Loop) ->
    iolist_to_binary([Workload, ": ", Loop]).

measure(erlang, Workload, _External, LoopRef) ->
    {ok, M} = py:call(workloads, run, [<<"erlang">>, atom_to_binary(Workload)], #{},
                      #{timeout => infinity, loop => LoopRef}),
    metrics(M);
measure(Loop, Workload, {Python, Script}, _LoopRef) ->
    {Kind, Env} = case Loop of
                      asyncio -> {"asyncio", [{"GLIBC_TUNABLES", false}]};
                      asyncio_tuned -> {"asyncio", [{"GLIBC_TUNABLES", ?TUNED_MALLOC}]};
                      uvloop -> {"uvloop", [{"GLIBC_TUNABLES", false}]}
                  end,
    Port = open_port({spawn_executable, Python},
                     [{args, [Script, Kind, atom_to_list(Workload)]}, {env, Env},
                      exit_status, binary, {line, 256}]),
    metrics(maps:from_list(read_metrics(Port, []))).

read_metrics(Port, Acc) ->
    receive
        {Port, {data, {eol, Line}}} ->
            [Key, Value] = binary:split(Line, <<" ">>),
            read_metrics(Port, [{Key, binary_to_float(Value)} | Acc]);
        {Port, {exit_status, 0}} -> Acc;
        {Port, {exit_status, Status}} -> error({workload_process_failed, Status})
    end.

%% Throughput workloads give p50 = p99 = mean time per operation, as `batch' workloads do;
%% the timer workload gives lateness percentiles, and extras (early firings, total time).
metrics(#{<<"rate">> := Rate} = M) ->
    PerOp = 1.0e6 / Rate,
    Extra = maps:without([<<"rate">>, <<"p50_us">>, <<"p99_us">>], M),
    #{rate => Rate,
      p50 => maps:get(<<"p50_us">>, M, PerOp),
      p99 => maps:get(<<"p99_us">>, M, PerOp),
      extra => Extra}.

targets(M) ->
    Rate = fun(W, L) -> rate(M, W, L) end,
    P99 = fun(L) -> field(M, timers, L, <<"p99_us">>) end,
    %% Early is a count over every run, not a median: one early timer is one too many.
    Early = lists:sum(extra_samples(M, timers, erlang, <<"early">>)),
    [ratio("call_soon >= 2x uvloop (ratio)", Rate(call_soon, erlang) / Rate(call_soon, uvloop), 2.0),
     at_most("timer p99 lateness <= uvloop's (us)", P99(erlang), P99(uvloop)),
     at_most("timers fired early, all runs (count)", Early, 0),
     ratio("TCP echo 1 conn >= tuned asyncio (ratio)",
           Rate(tcp_echo_1, erlang) / Rate(tcp_echo_1, asyncio_tuned), 1.0),
     ratio("TCP echo 100 conn >= uvloop (ratio)",
           Rate(tcp_echo_100, erlang) / Rate(tcp_echo_100, uvloop), 1.0),
     ratio("UDP echo >= tuned asyncio (ratio)",
           Rate(udp_echo, erlang) / Rate(udp_echo, asyncio_tuned), 1.0),
     ratio("subprocess spawns >= asyncio (ratio)",
           Rate(subprocess, erlang) / Rate(subprocess, asyncio), 1.0)].

row(Medians, Workload, Loop) ->
    Name = name(proplists:get_value(Workload, workloads()), proplists:get_value(Loop, loops())),
    hd([R || #{<<"name">> := N} = R <- Medians, N =:= Name]).

rate(Medians, Workload, Loop) ->
    maps:get(<<"rate">>, row(Medians, Workload, Loop)).

field(Medians, Workload, Loop, Key) ->
    maps:get(Key, row(Medians, Workload, Loop)).

extra_samples(Medians, Workload, Loop, Key) ->
    [maps:get(Key, E) || E <- maps:get(<<"extra_samples">>, row(Medians, Workload, Loop))].

ratio(What, Measured, Goal) ->
    #{<<"target">> => list_to_binary(What), <<"measured">> => Measured * 1.0,
      <<"goal">> => Goal, <<"met">> => Measured >= Goal}.

at_most(What, Measured, Goal) ->
    #{<<"target">> => list_to_binary(What), <<"measured">> => Measured * 1.0,
      <<"goal">> => Goal, <<"met">> => Measured =< Goal}.

%% TCP echo on 127.0.0.1 with the workloads' message (64 bytes): `Conns' client processes,
%% each sending and awaiting its echo `Rounds' times, and a process per server connection.
beam_echo(Conns, Rounds) ->
    {ok, L} = socket:open(inet, stream, tcp),
    ok = socket:bind(L, #{family => inet, addr => {127, 0, 0, 1}, port => 0}),
    ok = socket:listen(L, Conns),
    {ok, #{port := Port}} = socket:sockname(L),
    Clients = [connect(Port) || _ <- lists:seq(1, Conns)],
    Servers = [accept(L) || _ <- Clients],
    Self = self(),
    Message = binary:copy(<<"x">>, 64),
    Pids = [spawn_link(fun() ->
                           receive go -> ok end,
                           [ok = echo_round(C, Message) || _ <- lists:seq(1, Rounds)],
                           Self ! {done, self()}
                       end) || C <- Clients],
    [ok = socket:setopt(C, {otp, controlling_process}, P) || {C, P} <- lists:zip(Clients, Pids)],
    T0 = erlang:monotonic_time(),
    [P ! go || P <- Pids],
    [receive {done, P} -> ok end || P <- Pids],
    Seconds = erlang:convert_time_unit(erlang:monotonic_time() - T0, native, microsecond) / 1.0e6,
    [socket:close(S) || S <- Clients ++ Servers ++ [L]],
    metrics(#{<<"rate">> => Conns * Rounds / Seconds, <<"seconds">> => Seconds}).

connect(Port) ->
    {ok, S} = socket:open(inet, stream, tcp),
    ok = socket:connect(S, #{family => inet, addr => {127, 0, 0, 1}, port => Port}),
    ok = socket:setopt(S, {tcp, nodelay}, true),
    S.

accept(L) ->
    {ok, S} = socket:accept(L),
    ok = socket:setopt(S, {tcp, nodelay}, true),
    Server = spawn_link(fun() -> receive go -> serve(S) end end),
    ok = socket:setopt(S, {otp, controlling_process}, Server),
    Server ! go,
    S.

serve(S) ->
    case recv(S) of
        {ok, Data} -> ok = socket:send(S, Data), serve(S);
        {error, _} -> ok
    end.

echo_round(S, Message) ->
    ok = socket:send(S, Message),
    await(S, byte_size(Message)).

await(_S, 0) -> ok;
await(S, Left) ->
    {ok, Data} = recv(S),
    await(S, Left - byte_size(Data)).

%% One read: at once if data is there, else when the socket's select message says so.
recv(S) ->
    case socket:recv(S, 0, nowait) of
        {select, {select_info, _, Ref}} ->
            receive
                {'$socket', S, select, Ref} -> recv(S);
                {'$socket', S, abort, {Ref, Reason}} -> {error, Reason}
            end;
        Other ->
            Other
    end.

%% A Python string literal for a path (repr-style escaping of backslashes and quotes).
py_str(S) ->
    [$", string:replace(string:replace(S, "\\", "\\\\", all), "\"", "\\\"", all), $"].
