%% `make bench': each workload runs RUNS times beside its baselines, measured in the same
%% run; the table and bench/results/latest.json report medians across runs.
-module(pybeam_bench).

-export([main/1]).

-define(RUNS, 5).

main(Args) ->
    {Out, Only} = case Args of
                      [File | Names] -> {File, [list_to_binary(N) || N <- Names]};
                      [] -> {"bench/results/latest.json", []}
                  end,
    {ok, _} = application:ensure_all_started(pybeam),
    Groups = [{<<"sync_call">>, fun sync_call/0}, {<<"event_loop">>, fun event_loop/0},
              {<<"asyncio">>, fun pybeam_bench_asyncio:group/0},
              {<<"async">>, fun pybeam_bench_async:group/0}],
    Results = [run_group(Make()) || {Name, Make} <- Groups, Only =:= [] orelse lists:member(Name, Only)],
    Json = #{<<"runs">> => ?RUNS,
             <<"machine">> => machine(),
             <<"groups">> => Results},
    ok = filelib:ensure_dir(Out),
    ok = file:write_file(Out, json(Json)),
    io:format("~nwrote ~s~n", [Out]),
    halt(0).

%% A group: workloads measured in the same run, and targets checked against them.
%% Workload: {Name, Callers, TotalOps, Fun} where Fun() performs one operation.
sync_call() ->
    Sqrt = fun() -> {ok, 4.0} = py:call(math, sqrt, [16.0]) end,
    DirtyNoop = fun() -> ok = py_nif:noop_dirty() end,
    Echo = spawn_link(fun echo/0),
    PingPong = fun() -> Ref = make_ref(), Echo ! {self(), Ref}, receive {Ref, pong} -> ok end end,
    Workloads = lists:append(
        [[{calls, name("py:call(math, sqrt, [16.0])", C), C, Ops, Sqrt},
          {calls, name("baseline: no-op dirty NIF", C), C, Ops, DirtyNoop},
          {calls, name("baseline: Erlang message round trip", C), C, Ops, PingPong}]
         || {C, Ops} <- [{1, 100000}, {8, 200000}, {64, 320000}]]),
    Targets = fun(M) ->
        Seq = rate(M, name("py:call(math, sqrt, [16.0])", 1)),
        Dirty = rate(M, name("baseline: no-op dirty NIF", 1)),
        C64 = rate(M, name("py:call(math, sqrt, [16.0])", 64)),
        [target("sequential py:call >= 150,000 calls/s", Seq, 150000),
         target("sequential py:call >= 2x no-op dirty NIF (ratio)", Seq / Dirty, 2.0),
         target("64 callers py:call >= 500,000 calls/s", C64, 500000)]
    end,
    {<<"sync_call">>, Workloads, Targets}.

%% Issue 3: the event process. Each workload is one batch of events; `rate' is events/s.
event_loop() ->
    %% 50,000 calls are submitted back to back: more than the default queue bound.
    {ok, Loop, EP} = py_event_loop_v2:new(#{capacity => 100000}),
    N = 100000,
    Timers = fun() ->
                 [py_event_loop_v2:start_timer(EP, (I rem 10) + 1, I) || I <- lists:seq(1, N)],
                 drain(EP, N)
             end,
    RawTimers = fun() ->
                    [erlang:send_after((I rem 10) + 1, self(), {t, I}) || I <- lists:seq(1, N)],
                    _ = [receive {t, _} -> ok end || _ <- lists:seq(1, N)],
                    ok
                end,
    K = 50000,
    RawMessages = fun() ->
                      Self = self(),
                      spawn_link(fun() -> [Self ! {m, I} || I <- lists:seq(1, K)] end),
                      _ = [receive {m, _} -> ok end || _ <- lists:seq(1, K)],
                      ok
                  end,
    Calls = fun() ->
                [ok = py_event_loop_v2:call(Loop, EP, I, operator, truth, [I]) || I <- lists:seq(1, K)],
                drain(EP, K)
            end,
    CallBatches = fun() ->
                      [ok = py_event_loop_v2:call_many(Loop, EP, [{I, operator, truth, [I]} || I <- lists:seq(B, B + 999)])
                       || B <- lists:seq(1, K, 1000)],
                      drain(EP, K)
                  end,
    %% asyncio.sleep(0, I) is an awaitable: each call runs as a task on the loop's asyncio loop.
    AsyncCalls = fun() ->
                     [ok = py_event_loop_v2:async_call(Loop, EP, I, asyncio, sleep, [0, I]) || I <- lists:seq(1, K)],
                     drain(EP, K)
                 end,
    SocketData = fun() -> socket_events(EP, K) end,
    %% The event process's own share: its sources' messages, made by a process instead of
    %% the loop thread or a port, in the same shapes (see results_from_producer/4).
    BatchedCalls = fun() -> results_from_producer(EP, call_result, K, 128) end,
    BatchedAsync = fun() -> results_from_producer(EP, async_result, K, 128) end,
    UnbatchedCalls = fun() -> results_from_producer(EP, call_result, K, 1) end,
    SocketMessages = fun() -> socket_messages(EP, K) end,
    RawSocket = fun() -> socket_direct(K) end,
    Lines = 50000,
    ChildCmd = iolist_to_binary(io_lib:format("seq 1 ~b", [Lines])),
    ChildOut = fun() -> child_output(EP, ChildCmd, Lines) end,
    PortOut = fun() -> port_output(ChildCmd, Lines) end,
    Spawns = fun() -> spawn_true(EP, 200) end,
    PortSpawns = fun() -> port_true(200) end,
    Latency = fun() -> waiter_latency(EP, 2000) end,
    Workloads = [{<<"timers: 100,000 x start, fire, poll">>, N, Timers},
                 {<<"baseline: 100,000 x erlang:send_after + receive">>, N, RawTimers},
                 {<<"call_result: 50,000 events">>, K, Calls},
                 {<<"call_result: 50,000 events, submitted 1,000 per call_many">>, K, CallBatches},
                 {<<"async_result: 50,000 events (asyncio.sleep(0, I) tasks)">>, K, AsyncCalls},
                 {<<"socket_data: 50,000 events (tcp, packet 4)">>, K, SocketData},
                 {<<"EP share: call_result, 50,000 in batches of 128">>, K, BatchedCalls},
                 {<<"EP share: async_result, 50,000 in batches of 128">>, K, BatchedAsync},
                 {<<"EP share: call_result, 50,000 one per message">>, K, UnbatchedCalls},
                 {<<"EP share: socket_data, 50,000 {tcp, S, Data} messages">>, K, SocketMessages},
                 {<<"baseline: same packets received by a plain process">>, K, RawSocket},
                 {<<"baseline: 50,000 raw messages sent and received">>, K, RawMessages},
                 {<<"subprocess_stdout: 'seq 1 50000' (lines/s)">>, Lines, ChildOut},
                 {<<"baseline: same child through an Erlang port (lines/s)">>, Lines, PortOut},
                 {<<"subprocess spawn+exit: 200 x /bin/true">>, 200, Spawns},
                 {<<"baseline: 200 x /bin/true through Erlang ports">>, 200, PortSpawns}],
    Targets = fun(M) ->
        Raw = rate(M, <<"baseline: 50,000 raw messages sent and received">>),
        %% Each kind twice: the event process's share (its sources' messages made by a
        %% process), and end to end (with the Python call, task or gen_tcp behind it).
        [target("timers >= 1.0x raw send_after (ratio)",
                rate(M, <<"timers: 100,000 x start, fire, poll">>)
                / rate(M, <<"baseline: 100,000 x erlang:send_after + receive">>), 1.0)]
        ++ [target(io_lib:format("~s >= 0.6x raw messages (~s, ratio)", [Kind, How]), rate(M, Row) / Raw, 0.6)
          || {Kind, How, Row} <- [{call_result, "EP share", <<"EP share: call_result, 50,000 in batches of 128">>},
                                  {async_result, "EP share", <<"EP share: async_result, 50,000 in batches of 128">>},
                                  {socket_data, "EP share", <<"EP share: socket_data, 50,000 {tcp, S, Data} messages">>},
                                  {call_result, "end to end", <<"call_result: 50,000 events, submitted 1,000 per call_many">>},
                                  {async_result, "end to end", <<"async_result: 50,000 events (asyncio.sleep(0, I) tasks)">>},
                                  {socket_data, "end to end", <<"socket_data: 50,000 events (tcp, packet 4)">>}]]
        ++ [target("subprocess_stdout >= 0.6x raw messages (ratio, lines/s)",
                rate(M, <<"subprocess_stdout: 'seq 1 50000' (lines/s)">>) / Raw, 0.6)]
    end,
    {<<"event_loop">>,
     [{batch, Name, Ops, F} || {Name, Ops, F} <- Workloads]
     ++ [{samples, <<"latency: event arrival to blocked waiter return">>, Latency},
         {samples, <<"baseline: message to a process blocked in receive">>,
          fun() -> receive_latency(2000) end}],
     fun(M) -> Targets(M) ++ [latency_target(M)] end}.

drain(_EP, 0) -> ok;
drain(EP, N) -> drain(EP, N - length(py_event_loop_v2:poll(EP, 5000))).

socket_events(EP, K) ->
    {L, C, S} = tcp_pair(),
    Id = py_callback_id:next(),
    ok = py_event_loop_v2:watch_socket(EP, S, Id),
    spawn_link(fun() -> [ok = gen_tcp:send(C, <<"data">>) || _ <- lists:seq(1, K)] end),
    drain(EP, K),
    gen_tcp:close(C),
    gen_tcp:close(L),
    %% The close event.
    [_] = py_event_loop_v2:poll(EP, 5000),
    ok.

%% What the loop thread sends for a batch of results, `{'$py_results', Replies, Events,
%% StreamItems}', sent by a producer process instead: the event process's cost of
%% delivering and polling the events, without the Python that makes them. The loop thread
%% sends one such message per asyncio loop iteration, with up to `max_batch' (128) results.
results_from_producer(EP, Kind, K, Batch) ->
    spawn_link(fun() -> send_results(EP, Kind, 1, K, Batch) end),
    drain(EP, K).

send_results(_EP, _Kind, First, K, _Batch) when First > K ->
    ok;
send_results(EP, Kind, First, K, Batch) ->
    Last = min(K, First + Batch - 1),
    EP ! {'$py_results', [], [{Id, Kind, Id} || Id <- lists:seq(First, Last)], []},
    send_results(EP, Kind, Last + 1, K, Batch).

%% A handed-over TCP socket's messages, `{tcp, S, Data}', one per packet as the port sends
%% them, from a producer process: the event process's share of socket_data.
socket_messages(EP, K) ->
    {L, C, S} = tcp_pair(),
    Id = py_callback_id:next(),
    ok = py_event_loop_v2:watch_socket(EP, S, Id),
    spawn_link(fun() -> [EP ! {tcp, S, <<"data">>} || _ <- lists:seq(1, K)] end),
    drain(EP, K),
    gen_tcp:close(C),
    gen_tcp:close(L),
    [{Id, socket_closed, closed}] = py_event_loop_v2:poll(EP, 5000),
    ok.

%% A listener, and both ends of one connection to it (packet 4, the server end passive).
tcp_pair() ->
    {ok, L} = gen_tcp:listen(0, [binary, {packet, 4}, {active, false}]),
    {ok, Port} = inet:port(L),
    {ok, C} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {packet, 4}]),
    {ok, S} = gen_tcp:accept(L),
    {L, C, S}.

socket_direct(K) ->
    {L, C, S} = tcp_pair(),
    ok = inet:setopts(S, [{active, true}]),
    spawn_link(fun() -> [ok = gen_tcp:send(C, <<"data">>) || _ <- lists:seq(1, K)] end),
    _ = [receive {tcp, S, _} -> ok end || _ <- lists:seq(1, K)],
    gen_tcp:close(C),
    gen_tcp:close(L),
    ok.

child_output(EP, Cmd, Lines) ->
    Id = py_callback_id:next(),
    {ok, _} = py_event_loop_v2:spawn(EP, Id, [<<"sh">>, <<"-c">>, Cmd], #{}),
    Bytes = child_bytes(EP, Id, 0),
    Bytes = byte_size(iolist_to_binary([integer_to_list(I) ++ "
" || I <- lists:seq(1, Lines)])),
    ok.

child_bytes(EP, Id, Acc) ->
    Events = py_event_loop_v2:poll(EP, 5000),
    Acc1 = Acc + lists:sum([byte_size(D) || {_, subprocess_stdout, D} <- Events]),
    case lists:keymember(subprocess_exit, 2, Events) of
        true -> Acc1;
        false -> child_bytes(EP, Id, Acc1)
    end.

port_output(Cmd, _Lines) ->
    Port = open_port({spawn_executable, "/bin/sh"}, [{args, ["-c", Cmd]}, binary, exit_status, stream]),
    port_bytes(Port).

port_bytes(Port) ->
    receive
        {Port, {data, _}} -> port_bytes(Port);
        {Port, {exit_status, 0}} -> ok
    end.

spawn_true(EP, N) ->
    Ids = [begin Id = py_callback_id:next(), {ok, _} = py_event_loop_v2:spawn(EP, Id, [<<"/bin/true">>], #{}), Id end
           || _ <- lists:seq(1, N)],
    wait_exits(EP, length(Ids)).

wait_exits(_EP, 0) -> ok;
wait_exits(EP, N) ->
    wait_exits(EP, N - length([x || {_, subprocess_exit, 0} <- py_event_loop_v2:poll(EP, 5000)])).

port_true(N) ->
    Ports = [open_port({spawn_executable, "/bin/true"}, [exit_status]) || _ <- lists:seq(1, N)],
    [receive {P, {exit_status, 0}} -> ok end || P <- Ports],
    ok.

%% One waiter blocked in poll; another process starts a 0 ms timer, i.e. an event that
%% arrives at the event process at once. Measures arrival to the waiter's return (ns).
waiter_latency(EP, Samples) ->
    Self = self(),
    [begin
         spawn_link(fun() ->
                        [_] = py_event_loop_v2:poll(EP, infinity),
                        Self ! {returned, erlang:monotonic_time(nanosecond)}
                    end),
         wait_waiting(EP),
         T0 = erlang:monotonic_time(nanosecond),
         _ = py_event_loop_v2:start_timer(EP, 0, I),
         receive {returned, T1} -> T1 - T0 end
     end || I <- lists:seq(1, Samples)].

receive_latency(Samples) ->
    Self = self(),
    [begin
         Waiter = spawn_link(fun() -> receive go -> Self ! {returned, erlang:monotonic_time(nanosecond)} end end),
         wait_blocked(Waiter),
         T0 = erlang:monotonic_time(nanosecond),
         Waiter ! go,
         receive {returned, T1} -> T1 - T0 end
     end || _ <- lists:seq(1, Samples)].

wait_blocked(Pid) ->
    case process_info(Pid, status) of
        {status, waiting} -> ok;
        _ -> erlang:yield(), wait_blocked(Pid)
    end.

wait_waiting(EP) ->
    case py_event_loop_v2:info(EP) of
        #{waiters := 1} -> ok;
        _ -> erlang:yield(), wait_waiting(EP)
    end.

latency_target(M) ->
    [P50] = [P || #{<<"name">> := <<"latency: event arrival to blocked waiter return">>,
                    <<"p50_us">> := P} <- M],
    #{<<"target">> => <<"waiter latency p50 <= 5 us">>, <<"measured">> => P50 * 1.0,
      <<"goal">> => 5.0, <<"met">> => P50 =< 5.0}.

name(What, Callers) ->
    iolist_to_binary(io_lib:format("~s, ~b caller~s", [What, Callers, plural(Callers)])).

plural(1) -> "";
plural(_) -> "s".

echo() ->
    receive {From, Ref} -> From ! {Ref, pong}, echo() end.

run_group({Group, Workloads, Targets}) ->
    io:format("~n== ~s (median of ~b runs; rates in ops/s, latencies in us)~n", [Group, ?RUNS]),
    io:format("~-58s ~12s ~9s ~9s~n", ["workload", "rate", "p50", "p99"]),
    _Warmup = [isolated(warmup(W)) || W <- Workloads],
    %% Interleave the workloads run by run, so that machine noise hits them alike.
    Runs = [[isolated(W) || W <- Workloads] || _ <- lists:seq(1, ?RUNS)],
    Medians = [summarise(W, Samples) || {W, Samples} <- lists:zip(Workloads, transpose(Runs))],
    Checked = Targets(Medians),
    [io:format("  target ~-55s ~s (measured ~.2f)~n",
               [T, case Met of true -> "MET"; false -> "MISSED" end, V])
     || #{<<"target">> := T, <<"met">> := Met, <<"measured">> := V} <- Checked],
    #{<<"group">> => Group, <<"workloads">> => Medians, <<"targets">> => Checked}.

summarise(Workload, Samples) ->
    M = #{<<"name">> => workload_name(Workload),
          <<"callers">> => workload_callers(Workload),
          <<"rate">> => median([R || #{rate := R} <- Samples]),
          <<"p50_us">> => median([P || #{p50 := P} <- Samples]),
          <<"p99_us">> => median([P || #{p99 := P} <- Samples]),
          <<"rate_samples">> => [round(R) || #{rate := R} <- Samples]},
    Extras = [E || #{extra := E} <- Samples],
    io:format("~-58s ~12b ~9.1f ~9.1f~s~n",
              [maps:get(<<"name">>, M), round(maps:get(<<"rate">>, M)),
               maps:get(<<"p50_us">>, M), maps:get(<<"p99_us">>, M), format_extra(Extras)]),
    case Extras of
        [] -> M;
        _ -> M#{<<"extra">> => median_extra(Extras), <<"extra_samples">> => Extras}
    end.

%% Extra metrics of `measured' workloads (numbers by name): their medians across runs.
median_extra(Extras) ->
    maps:from_list([{K, median([maps:get(K, E) || E <- Extras])} || K <- maps:keys(hd(Extras))]).

%% `seconds' is the rate again, in another form: only the others are worth a column.
format_extra([]) -> "";
format_extra(Extras) ->
    [[" ", K, "=", io_lib:format("~.1f", [V])]
     || {K, V} <- lists:sort(maps:to_list(median_extra(Extras))), K =/= <<"seconds">>].

workload_name({calls, Name, _, _, _}) -> Name;
workload_name({batch, Name, _, _}) -> Name;
workload_name({samples, Name, _}) -> Name;
workload_name({measured, Name, _}) -> Name.

workload_callers({calls, _, C, _, _}) -> C;
workload_callers(_) -> 1.

warmup({calls, Name, C, Ops, F}) -> {calls, Name, C, min(Ops, 20000), F};
%% A self-measured workload times only its own work, on a fresh loop or OS process each
%% time: a warm-up would warm nothing that the next run keeps.
warmup({measured, Name, _F}) -> {measured, Name, fun() -> #{} end};
warmup(W) -> W.

%% Each measurement runs in a fresh process: an empty mailbox (a receive must not scan
%% leftovers of earlier workloads, such as the exit messages of ports) and no state left.
isolated(Workload) ->
    {Pid, Mon} = spawn_monitor(fun() -> exit({measured, measure(Workload)}) end),
    receive
        {'DOWN', Mon, process, Pid, {measured, Result}} -> Result;
        {'DOWN', Mon, process, Pid, Other} -> error({workload_failed, workload_name(Workload), Other})
    end.

%% Per-call workload: Ops operations spread over Callers processes, each one timed.
measure({calls, _Name, Callers, Ops, Fun}) ->
    Self = self(),
    PerCaller = max(1, Ops div Callers),
    T0 = erlang:monotonic_time(),
    Pids = [spawn_link(fun() -> Self ! {lat, self(), timed(Fun, PerCaller, [])} end)
            || _ <- lists:seq(1, Callers)],
    Lats = lists:append([receive {lat, P, L} -> L end || P <- Pids]),
    Elapsed = erlang:convert_time_unit(erlang:monotonic_time() - T0, native, nanosecond),
    (percentiles(Lats))#{rate => length(Lats) / (Elapsed / 1.0e9)};
%% Batch workload: one call does all Ops operations; only the total time is known.
measure({batch, _Name, Ops, Fun}) ->
    T0 = erlang:monotonic_time(nanosecond),
    ok = Fun(),
    PerOp = (erlang:monotonic_time(nanosecond) - T0) / Ops / 1000,
    #{rate => 1.0e6 / PerOp, p50 => PerOp, p99 => PerOp};
%% Latency workload: the function returns its own samples, in nanoseconds.
measure({samples, _Name, Fun}) ->
    (percentiles(Fun()))#{rate => 0.0};
%% Self-measured workload (e.g. in another OS process): the function returns its own
%% #{rate, p50, p99} (p50 and p99 in us) and `extra', other metrics by name.
measure({measured, _Name, Fun}) ->
    Fun().

percentiles(Lats) ->
    Sorted = lists:sort(Lats),
    N = length(Sorted),
    #{p50 => lists:nth(max(1, round(N * 0.50)), Sorted) / 1000,
      p99 => lists:nth(max(1, round(N * 0.99)), Sorted) / 1000}.

timed(_Fun, 0, Acc) ->
    Acc;
timed(Fun, N, Acc) ->
    T0 = erlang:monotonic_time(nanosecond),
    Fun(),
    timed(Fun, N - 1, [erlang:monotonic_time(nanosecond) - T0 | Acc]).

rate(Medians, Name) ->
    hd([R || #{<<"name">> := N, <<"rate">> := R} <- Medians, N =:= Name]).

target(What, Measured, Goal) ->
    #{<<"target">> => list_to_binary(What), <<"measured">> => Measured * 1.0,
      <<"goal">> => Goal, <<"met">> => Measured >= Goal}.

transpose([[] | _]) -> [];
transpose(Rows) -> [[hd(R) || R <- Rows] | transpose([tl(R) || R <- Rows])].

median(L) ->
    S = lists:sort(L),
    lists:nth((length(S) + 1) div 2, S).

machine() ->
    #{<<"otp">> => list_to_binary(erlang:system_info(otp_release)),
      <<"schedulers">> => erlang:system_info(schedulers_online),
      <<"cores">> => erlang:system_info(logical_processors_available),
      <<"python">> => maps:get(version, py_nif:python_info())}.

%% A small JSON encoder: OTP 25 has none.
json(M) when is_map(M) ->
    ["{", lists:join(",", [[json(K), ":", json(V)] || {K, V} <- lists:sort(maps:to_list(M))]), "}"];
json(L) when is_list(L) -> ["[", lists:join(",", [json(V) || V <- L]), "]"];
json(B) when is_binary(B) -> [$", escape(B), $"];
json(true) -> "true";
json(false) -> "false";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(I) when is_integer(I) -> integer_to_list(I);
json(F) when is_float(F) -> float_to_list(F, [{decimals, 3}, compact]).

escape(B) ->
    [case C of $" -> "\\\""; $\\ -> "\\\\"; $\n -> "\\n"; _ when C < 32 -> io_lib:format("\\u~4.16.0b", [C]); _ -> C end
     || <<C/utf8>> <= B].
